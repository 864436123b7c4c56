"""Bad job files through the real command, each in its own process under a timeout: one line on stderr naming the
field, line or file and what is allowed, exit code 2, no traceback, no hang, nothing written.

Covers sizes that would hang (a billion steps, a trillion samples), values YAML accepts silently elsewhere
(duplicate keys, NaN and infinity, negative or huge seeds), alias bombs, bytes that are not UTF-8, a directory
given as a job file, an output folder that is a file, and a closed pipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

GOOD = """\
name: t
model: {name: gmm2d}
sampler: {preset: linear-sde, steps: 6}
method: {name: bon, n: 2}
reward: {name: mode_log_density, options: {mode: 2}}
prompts: [a, b]
output: {dir: out}
"""


def flowscale(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowscale_ray", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def with_lines(*extra: str) -> str:
    """GOOD with top-level keys replaced by `extra` lines ('key: value')."""
    keys = {line.split(":", 1)[0] for line in extra}
    kept = [line for line in GOOD.splitlines() if line.split(":", 1)[0] not in keys]
    return "\n".join([*kept, *extra]) + "\n"


BOMB = "\n".join(
    [f"l0: &l0 [{', '.join(['x'] * 10)}]"] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 8)]
)

CASES = [
    # (id, job file text, words the one line must hold)
    ("duplicate-top-key", GOOD + "seed: 1\nseed: 2\n", "duplicate key 'seed' (first given at line 8)"),
    ("duplicate-nested-key", with_lines("model: {name: gmm2d, options: {a: 1, a: 2}}"), "duplicate key 'a'"),
    ("alias-bomb", GOOD + BOMB + "\n", "more than 1000000 values once YAML aliases are expanded"),
    (
        "alias-bomb-in-options",
        with_lines("model:\n  name: gmm2d\n  options:\n" + "\n".join("    " + line for line in BOMB.splitlines())),
        "more than 1000000 values once YAML aliases are expanded",
    ),
    ("seed-negative", with_lines("seed: -1"), "seed: must be >= 0, got -1"),
    ("seed-huge", with_lines("seed: 1180591620717411303424"), "seed: must be < 9223372036854775808"),
    (
        "steps-billion",
        with_lines("sampler: {preset: linear-sde, steps: 1000000000}"),
        "sampler.steps: must be 2 to 10000",
    ),
    ("bon-trillion", with_lines("method: {name: bon, n: 1000000000000}"), "method: plans 6000000000000 NFE per prompt"),
    ("smc-nan", with_lines("method: {name: smc, temperature: .nan}"), "method.temperature: must be a finite number"),
    ("norm-inf", with_lines("sampler: {preset: linear-sde, diffusion_norm: .inf}"), "sampler.diffusion_norm: must be"),
    (
        "min-reward-nan",
        with_lines("output: {dir: out, min_reward: .nan}"),
        "output.min_reward: must be a finite number",
    ),
    (
        "budget-nan",
        with_lines("budget: {mode: dataset, mean_nfe: .nan, base_nfe: 6, target_reward: 0}"),
        "budget.mean_nfe: must be a finite number",
    ),
]


@pytest.mark.parametrize("text, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_job_files_fail_with_one_line_and_write_nothing(tmp_path, command, text, words):
    (tmp_path / "job.yaml").write_text(text)
    proc = flowscale(command, "job.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert words in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_bytes_that_are_not_utf8_are_located(tmp_path):
    (tmp_path / "job.yaml").write_bytes(GOOD.encode() + b"name: caf\xe9\n")
    proc = flowscale("validate", "job.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not UTF-8 text (byte 0xe9 at line 8, column 10)" in proc.stderr


def test_a_directory_is_not_a_job_file(tmp_path):
    (tmp_path / "jobs").mkdir()
    proc = flowscale("run", "jobs", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "jobs: is a directory, not a job file" in proc.stderr


def test_an_output_folder_that_is_a_file_is_refused_and_left_alone(tmp_path):
    (tmp_path / "out").write_text("precious")
    (tmp_path / "job.yaml").write_text(GOOD)
    proc = flowscale("run", "job.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "output.dir: cannot use" in proc.stderr and "Not a directory" in proc.stderr
    assert (tmp_path / "out").read_text() == "precious"


def test_a_closed_pipe_ends_quietly(tmp_path):
    (tmp_path / "job.yaml").write_text(GOOD)
    assert flowscale("run", "job.yaml", cwd=tmp_path).returncode == 0
    proc = subprocess.run(
        f"{sys.executable} -m flowscale_ray inspect out/t --no-sheet | head -1",
        shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.stdout.startswith("run t at out/t") and proc.stderr == "", proc.stderr


def test_the_cases_are_what_they_say():
    """Each corpus document is valid YAML apart from what it tests (so the line is about that)."""
    for name, text, _ in CASES:
        if name.startswith(("duplicate", "alias-bomb")):
            continue
        assert isinstance(yaml.safe_load(text), dict), name


PROMPT_FILES = [
    ("surrogate-text", '{"prompt": "a \\ud800 b"}\n', "prompts.jsonl line 1: the prompt holds a lone surrogate"),
    ("surrogate-id", '{"prompt": "a", "id": "x\\udc00"}\n', "line 1: the prompt id holds a lone surrogate"),
    ("nan-metadata", '{"prompt": "a"}\n{"prompt": "b", "w": NaN}\n', "line 2: metadata 'w': holds nan"),
    ("seed-huge", '{"prompt": "a", "seed": 1180591620717411303424}\n', "line 1: seed must be < 2**63"),
]


@pytest.mark.parametrize("content, words", [c[1:] for c in PROMPT_FILES], ids=[c[0] for c in PROMPT_FILES])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_prompts_that_cannot_be_written_are_refused_up_front(tmp_path, command, content, words):
    (tmp_path / "prompts.jsonl").write_text(content)
    (tmp_path / "job.yaml").write_text(with_lines("prompts: {file: prompts.jsonl}"))
    proc = flowscale(command, "job.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert words in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
