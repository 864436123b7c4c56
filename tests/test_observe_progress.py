"""Progress: a tqdm bar on an interactive terminal (fake TTY), plain periodic log lines otherwise;
the run's ordinary output is unchanged when no line is due."""

import io
import logging
from types import SimpleNamespace

from flowscale_ray.config import load_job
from flowscale_ray.logs import ConsoleHandler
from flowscale_ray.observe.progress import BarProgress, LogProgress, format_duration, make_progress
from flowscale_ray.observe.recorder import RunRecorder
from flowscale_ray.run import run_job
from tests.helpers import LogLines


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def Result(reward, seconds=0.1):  # a TaskResult stand-in: what the recorder reads
    return SimpleNamespace(reward=reward, seconds=seconds, outcome=SimpleNamespace(records=[]))


def job_doc(tmp_path, **metrics):
    return {
        "name": "progress",
        "model": {"name": "gmm2d"},
        "method": {"name": "bon", "n": 4},
        "reward": {"name": "mode_log_density", "options": {"mode": 2}},
        "prompts": ["a", "b", "c", "d"],
        "output": {"dir": str(tmp_path / "out")},
        "metrics": metrics,
    }


def test_auto_picks_a_bar_on_a_terminal_and_log_lines_elsewhere():
    assert isinstance(make_progress("auto", 30.0, FakeTTY()), BarProgress)
    assert isinstance(make_progress("auto", 30.0, io.StringIO()), LogProgress)
    assert isinstance(make_progress("bar", 30.0, io.StringIO()), BarProgress)
    assert make_progress("off", 30.0, FakeTTY()) is None


def test_bar_shows_prompts_rate_eta_and_best_reward():
    tty = FakeTTY()
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    bar = BarProgress(tty, min_interval_s=0.0, clock=clock)
    rec = RunRecorder("bon", "m", "r", prompts=4, planned_nfe=400, progress=bar, clock=clock)
    now[0] = 2.0
    rec.prompt_started()
    rec.batch_evaluated(100, [0.1, 0.2])
    rec.prompt_finished(Result(0.75))
    last = tty.getvalue().rsplit("\r", 1)[1]
    assert "\n" not in tty.getvalue()  # redrawn in place
    assert "1/4 prompts" in last and "50 NFE/s" in last and "ETA 6s" in last and "best 0.75" in last
    assert "[" + "#" * 6 + "." * 18 + "]" in last
    now[0] = 4.0
    rec.prompt_failed()
    rec.batch_evaluated(300, [])
    rec.close()
    last = tty.getvalue().rstrip("\n").rsplit("\r", 1)[1]
    assert "2/4 prompts (1 failed)" in last and "100 NFE/s" in last and "ETA 0s" in last
    assert tty.getvalue().endswith("\n")


def test_a_log_line_clears_the_bar_and_the_bar_is_redrawn(monkeypatch, capsys):
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)  # tqdm.write clears bars that share the terminal with the line
    bar = BarProgress(tty, min_interval_s=0.0)
    rec = RunRecorder("bon", "m", "r", prompts=2, planned_nfe=20, progress=bar)
    rec.batch_evaluated(5, [])
    drawn = tty.getvalue()
    record = logging.LogRecord("flowscale_ray.x", logging.INFO, __file__, 1, "shard 1/1 committed", None, None)
    ConsoleHandler().emit(record)
    assert capsys.readouterr().out == "shard 1/1 committed\n"
    after = tty.getvalue()[len(drawn) :]
    assert after.startswith("\r") and after.strip(" \r").startswith("[")  # cleared, then drawn again
    rec.close()


def test_log_lines_come_every_interval():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    lines = []
    rec = RunRecorder(
        "bon", "m", "r", prompts=3, planned_nfe=30, progress=LogProgress(lines.append, 10.0, clock), clock=clock
    )
    for t in (1.0, 5.0, 9.0):
        now[0] = t
        rec.batch_evaluated(2, [0.5])
    assert lines == []
    now[0] = 10.0
    rec.prompt_finished(Result(0.5))
    now[0] = 15.0
    rec.batch_evaluated(4, [])
    assert lines == ["progress: 1/3 prompts (0 failed), 6 NFE, 1 NFE/s, ETA 40s, best reward 0.5"]
    now[0] = 21.0
    rec.batch_evaluated(4, [])
    assert len(lines) == 2 and lines[1].startswith("progress: 1/3 prompts (0 failed), 14 NFE")


def test_a_run_logs_progress_lines_and_default_output_has_none(tmp_path):
    with LogLines() as lines:
        report = run_job(load_job(job_doc(tmp_path, progress="log", log_interval_s=1e-6)))
    progress = [m for m in lines if m.startswith("progress: ")]
    assert progress[-1].startswith(f"progress: 4/4 prompts (0 failed), {report.nfe} NFE, ")
    with LogLines() as quiet:
        run_job(load_job({**job_doc(tmp_path), "name": "quiet"}))  # not a terminal, 30 s interval
    assert not [m for m in quiet if m.startswith("progress")]
    assert any("prompts run (0 failed)" in m for m in quiet)


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 61, 3725, float("inf"))] == ["0s", "59s", "1m01s", "1h02m", "?"]
