"""`flowscale report`: a self-contained HTML with the three plots (decoded from their base64 PNGs), a Markdown
report with PNGs beside it, baselines found as sibling runs, one-line errors for what is not a run."""

import base64
import io
import re
import struct

import pytest

from flowscale_ray.cli import main
from flowscale_ray.config import load_job
from flowscale_ray.observe.report import reward_curve, utilization_series
from flowscale_ray.run import run_with_baselines

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    job = load_job(
        {
            "name": "rep",
            "model": {"name": "gmm2d"},
            "method": {"name": "rbf", "n_chains": 2, "nfe_budget": 60},
            "compare_with": [{"name": "smc", "n_particles": 6}],
            "reward": {"name": "mode_log_density", "options": {"mode": 2}},
            "prompts": ["a", "b", "c", "d", "e"],
            "output": {"dir": str(out)},
            "metrics": {"progress": "off", "timeline_interval_s": 0.01},
        }
    )
    run_with_baselines(job)
    return out


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG) and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_html_report_is_self_contained_with_three_plots(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir / "rep"), "--out", str(out)]) == 0
    assert "report of rep-smc, rep:" in capsys.readouterr().out
    text = out.read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert [alt for alt, _ in images] == [
        "Best reward vs NFE per method",
        "Final reward distribution per method",
        "Replica utilization over time",
    ]
    for _, b64 in images:
        data = base64.b64decode(b64)
        w, h = png_size(data)
        assert w >= 300 and h >= 200
        import matplotlib.image

        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert pixels.std() > 0.01  # something is drawn
    # self-contained: no external resources at all
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)
    assert "<script" not in text and "<link" not in text
    assert ">rep-smc<" in text and ">rep<" in text and ">smc<" in text and ">rbf<" in text


def test_markdown_report_writes_pngs_beside_it(run_dir, tmp_path):
    out = tmp_path / "md" / "report.md"
    assert main(["report", str(run_dir / "rep"), "--out", str(out), "--no-baselines"]) == 0
    text = out.read_text()
    pngs = sorted(p.name for p in out.parent.glob("*.png"))
    assert pngs == ["report-reward-distribution.png", "report-reward-vs-nfe.png", "report-utilization.png"]
    for name in pngs:
        assert f"]({name})" in text
        png_size((out.parent / name).read_bytes())
    assert "| rep | rbf | complete | 5/5 |" in text and "rep-smc" not in text


def test_timeline_and_curves_from_the_run(run_dir):
    import json

    timeline = json.loads((run_dir / "rep" / ".flowscale" / "timeline.json").read_text())
    assert timeline["method"] == "rbf" and timeline["replicas"] == ["0"]
    samples = timeline["samples"]
    assert len(samples) >= 2 and samples[-1]["done"] == 5 and samples[-1]["busy"]["0"] > 0
    series = utilization_series(timeline)
    xs, ys = series["0"]
    assert xs and all(0.0 <= y <= 1.0 for y in ys)


def test_reward_curve_is_the_running_best_at_mean_cumulative_nfe():
    rec = lambda nfe, best: {"nfe": nfe, "best_reward": best}  # noqa: E731
    rows = [
        {"step_records": [rec(10, -3.0), rec(10, -5.0), rec(10, -1.0)]},
        {"step_records": [rec(20, -1.0), rec(20, -2.0), rec(20, 0.0)]},
    ]
    xs, ys = reward_curve(rows)
    assert xs == [15, 30, 45] and ys == [-2.0, -2.0, -0.5]


def test_utilization_series_from_busy_seconds():
    timeline = {
        "replicas": ["0", "1"],
        "samples": [
            {"t": 0.0, "busy": {"0": 0.0, "1": 0.0}},
            {"t": 10.0, "busy": {"0": 5.0, "1": 10.0}},
            {"t": 20.0, "busy": {"0": 5.0, "1": 12.0}},
        ],
    }
    series = utilization_series(timeline)
    assert series["0"] == ([5.0, 15.0], [0.5, 0.0]) and series["1"] == ([5.0, 15.0], [1.0, 0.2])


def test_not_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowscale: error: report: ") and "not a flowscale run" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- reward hacking


@pytest.fixture(scope="module")
def hacked_dir(tmp_path_factory):
    """The built-in task with a reward that is easy to hack: JPEG compressibility (flat, empty images compress
    best), the CNN counter held out, Best-of-N against plain sampling on the same prompts and seeds."""
    out = tmp_path_factory.mktemp("hacking")
    job = load_job(
        {
            "name": "hack",
            "model": {"name": "shapes"},
            "sampler": {"preset": "linear-sde", "steps": 4},
            "method": {"name": "bon", "n": 6},
            "compare_with": [{"name": "base"}],
            "reward": {"name": "jpeg_compressibility"},
            "held_out": {"name": "counting_heldout"},
            "prompts": [
                "3 red circles",
                "2 blue squares and 4 yellow circles",
                "5 green squares",
                "1 yellow square and 3 red circles",
                "4 blue circles and 2 green circles",
                "6 yellow circles",
                "2 red squares",
                "7 blue circles",
            ],
            "output": {"dir": str(out), "save_images": False},
            "metrics": {"progress": "off"},
        }
    )
    run_with_baselines(job)
    return out


def test_reward_hacking_lists_prompts_whose_reward_rose_while_the_held_out_fell(hacked_dir, tmp_path):
    import pyarrow.dataset as ds

    from flowscale_ray.config import StorageConfig
    from flowscale_ray.observe.report import load_runs, reward_hacking

    def rows(run):
        table = ds.dataset(str(hacked_dir / run / "data"), format="parquet").to_table()
        return {r["prompt_id"]: r for r in table.to_pylist()}

    base, bon = rows("hack-base"), rows("hack")
    expected = sorted(
        p for p in bon if bon[p]["reward"] > base[p]["reward"] and bon[p]["held_out"] < base[p]["held_out"]
    )
    assert expected, "the hackable reward should have fooled the search on some prompt"
    assert len(expected) < len(bon)  # and not on every prompt: the flag discriminates
    runs = load_runs(str(hacked_dir / "hack"), StorageConfig())
    assert [r.method for r in runs] == ["base", "bon"]
    found = reward_hacking(runs)
    assert found is not None and set(found) == {"bon"}
    compared, flags = found["bon"]
    assert compared == len(bon) and sorted(f.prompt_id for f in flags) == expected
    drops = [f.held_out - f.base_held_out for f in flags]
    assert drops == sorted(drops) and all(d < 0 for d in drops)
    for f in flags:
        assert f.reward == bon[f.prompt_id]["reward"] and f.base_reward == base[f.prompt_id]["reward"]
        assert f.prompt == bon[f.prompt_id]["prompt"]
    # Both report formats carry the section, one line per flagged prompt.
    md = tmp_path / "r.md"
    assert main(["report", str(hacked_dir / "hack"), "--out", str(md)]) == 0
    text = md.read_text()
    assert "## Reward hacking" in text and f"bon: {len(expected)} of {len(bon)} prompts" in text
    assert sum(1 for line in text.splitlines() if line.startswith("| bon |")) == len(expected)
    page = tmp_path / "r.html"
    assert main(["report", str(hacked_dir / "hack"), "--out", str(page)]) == 0
    assert "<h2>Reward hacking</h2>" in page.read_text()


def test_no_reward_hacking_section_without_a_base_run_or_held_out(run_dir, tmp_path):
    from flowscale_ray.config import StorageConfig
    from flowscale_ray.observe.report import load_runs, reward_hacking

    assert reward_hacking(load_runs(str(run_dir / "rep"), StorageConfig())) is None  # rbf vs smc, no held-out
    out = tmp_path / "r.md"
    assert main(["report", str(run_dir / "rep"), "--out", str(out)]) == 0
    assert "Reward hacking" not in out.read_text()
