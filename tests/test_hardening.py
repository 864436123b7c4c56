"""Bad input through the real command, each case in its own process under a timeout: one line on stderr naming the
field, line or file and what is allowed, exit code 2, no traceback, no hang, nothing written (and a file already
there left alone); secrets never shown.

Covers job files (sizes that would hang, values YAML accepts silently elsewhere: duplicate keys, NaN and infinity,
negative or huge seeds; alias bombs; bytes that are not UTF-8; a directory; an output folder that is a file or that
would not persist), prompt files (lone surrogates, NaN, huge seeds, JSON nested 200,000 levels deep, CSV quotes
that would merge rows, rows of the wrong width, a directory), components (a `module:attr` that is not a model, a
reward option the factory does not take, a held-out reward that cannot score the model's samples, every error
under the field the user wrote), storage (an S3 endpoint that is down, for run, validate, inspect and report;
secrets in errors), a diffusers model folder that cannot be loaded (no library chatter before the line), and a
closed pipe.

The cases share one batch process: it imports the package once, then forks one child per case (so each case is
still a process of its own, with its own working folder, environment, stdout and stderr, killed at its timeout)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

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


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DOWN = f"http://127.0.0.1:{closed_port()}"
KEY, SECRET = "AKIAHARDENINGKEY0001", "hardening-secret-Vb61"

BOMB = "\n".join(
    [f"l0: &l0 [{', '.join(['x'] * 10)}]"] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 8)]
)


# -- the corpus ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    argv: list[str]  # flowscale's arguments
    files: dict[str, str | bytes]  # written into the case's own folder first ('dir/' makes a folder)
    words: list[str]  # each must be on the one stderr line
    absent: list[str] = field(default_factory=list)  # never on stdout or stderr (secrets, class names, ...)
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 60
    then: list[list[str]] = field(default_factory=list)  # more commands, run after it in the same folder


def job_cases(name: str, text: str, words: str | list[str], absent: list[str] | None = None) -> list[Case]:
    """A bad job file through both `validate` and `run`."""
    words = [words] if isinstance(words, str) else words
    return [
        Case(f"{name}-{cmd}", [cmd, "job.yaml"], {"job.yaml": text}, words, absent or []) for cmd in ("validate", "run")
    ]


def prompt_cases(name: str, filename: str, content: str | bytes, words: str) -> list[Case]:
    """A bad prompt file through both `validate` and `run`."""
    job = with_lines(f"prompts: {{file: {filename.rstrip('/')}}}")
    return [
        Case(f"{name}-{cmd}", [cmd, "job.yaml"], {"job.yaml": job, filename: content}, [words])
        for cmd in ("validate", "run")
    ]


JOB_FILES = [
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
    # output locations that would not keep the run
    ("output-memory", with_lines("output: {dir: 'memory://bucket/out'}"), "output.dir: memory:// keeps files in this"),
    (
        "output-memory-chained",
        with_lines("output: {dir: 'simplecache::memory://bucket/out'}"),
        "output.dir: memory:// keeps files in this process's memory only: the whole run would be lost",
    ),
    ("output-http", with_lines("output: {dir: 'https://example.com/out'}"), "output.dir: https:// is read-only"),
    # components: the field the user wrote, never an internal name
    (
        "held-out-unknown",
        with_lines("held_out: {name: nope}"),
        "held_out.name: unknown reward 'nope'; allowed: ",
    ),
    (
        "held-out-bad-option",
        with_lines("held_out: {name: negative_distance, options: {target: [0, 0], bogus: 1}}"),
        "held_out.options.bogus: unknown option of reward 'negative_distance'; allowed: target",
    ),
    (
        "held-out-missing-option",
        with_lines("held_out: {name: negative_distance}"),
        "held_out.options.target: required by reward 'negative_distance'",
    ),
    (
        "held-out-out-of-range",
        with_lines("held_out: {name: mode_log_density, options: {mode: 9}}"),
        "held_out.options.mode: must be in 0..2, got 9",
    ),
    (
        "held-out-wrong-dimension",
        with_lines("held_out: {name: negative_distance, options: {target: [0.5, -3.5, 1.0]}}"),
        "held_out.options: held_out 'negative_distance' cannot score the samples of model 'gmm2d' (shape (2,))",
    ),
    (
        "reward-wrong-dimension",
        with_lines("reward: {name: negative_squared_distance, options: {target: [1, 2, 3, 4]}}"),
        "reward.options: reward 'negative_squared_distance' cannot score the samples of model 'gmm2d'",
    ),
    (
        "model-not-a-model",
        with_lines("model: {name: 'os:getcwd'}"),
        "model.name: 'os:getcwd' returned a str, not a flow model",
    ),
    ("model-not-callable", with_lines("model: {name: 'os:sep'}"), "model.name: 'os:sep' is not a class or factory"),
    (
        "model-unknown-option",
        with_lines("model: {name: gmm2d, options: {zzz: 1}}"),
        "model.options.zzz: unknown option of model 'gmm2d'; allowed: interpolant",
    ),
    # storage: errors about secrets never show them
    (
        "storage-secret-a-number",
        with_lines("storage: {secret: 918273645}"),
        "storage.secret: expected a string or null, got an integer (not shown",
    ),
    (
        "storage-endpoint-with-user-info",
        with_lines("storage: {endpoint_url: 'AKIAUSERINFO:hunter2pass@minio:9000'}"),
        "storage.endpoint_url: expected a URL such as http://127.0.0.1:9000, got '<redacted>@minio:9000'",
    ),
    ("storage-retries-huge", with_lines("storage: {retries: 1000000000}"), "storage.retries: must be <= 100"),
    ("output-s3-no-bucket", with_lines("output: {dir: 's3:///out'}"), "output.dir: s3:// names no bucket"),
    (
        "s3-no-credentials",
        with_lines("output: {dir: 's3://bucket/out'}", f"storage: {{endpoint_url: '{DOWN}'}}"),
        "storage: no S3 credentials found: set storage.key and storage.secret, the AWS_ACCESS_KEY_ID",
    ),
    ("yaml-number-5000-digits", with_lines("seed: " + "9" * 5000), "invalid YAML: a number of more than 4300 digits"),
    ("yaml-impossible-date", with_lines("name: 2026-13-45"), "invalid YAML: month must be in 1..12"),
    (
        "storage-a-string",
        with_lines("storage: s3cr3t-as-a-string"),
        "storage: expected a mapping, got a string (not shown",
    ),
]
NO_SECRETS = ["918273645", "hunter2pass", "AKIAUSERINFO", "s3cr3t-as-a-string", "PromptFileConfig", "__init__"]

DEEP = 200_000
PROMPT_FILES = [
    ("surrogate-text", "p.jsonl", '{"prompt": "a \\ud800 b"}\n', "p.jsonl line 1: the prompt holds a lone surrogate"),
    ("surrogate-id", "p.jsonl", '{"prompt": "a", "id": "x\\udc00"}\n', "line 1: the prompt id holds a lone surrogate"),
    ("nan-metadata", "p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "w": NaN}\n', "line 2: metadata 'w': holds nan"),
    (
        "prompt-seed-huge",
        "p.jsonl",
        '{"prompt": "a", "seed": 1180591620717411303424}\n',
        "line 1: seed must be < 2**63",
    ),
    (
        "seed-negative-prompt",
        "p.jsonl",
        '{"prompt": "a", "seed": -1}\n',
        "line 1: seed must be an integer >= 0, got -1",
    ),
    (
        "jsonl-nested-200000",
        "p.jsonl",
        '{"prompt": "a"}\n{"prompt": "b", "m": ' + "[" * DEEP + "]" * DEEP + "}\n",
        "prompts.file: p.jsonl line 2: JSON nested too deeply (metadata may nest at most 32 levels)",
    ),
    (
        "jsonl-nested-100",
        "p.jsonl",
        '{"prompt": "a", "m": ' + "[" * 100 + "]" * 100 + "}\n",
        "p.jsonl line 1: metadata 'm': nested more than 32 levels deep",
    ),
    (
        "jsonl-number-5000-digits",
        "p.jsonl",
        '{"prompt": "a", "seed": ' + "9" * 5000 + "}\n",
        "p.jsonl line 1: invalid JSON (a number of more than 4300 digits)",
    ),
    (
        "csv-quote-never-closed",
        "p.csv",
        'prompt,id\nhello,1\n"unterminated,2\nthird,3\nfourth,4\n',
        "p.csv line 3: bad CSV (a quoted field that opens here is never closed (an unterminated quote))",
    ),
    (
        "csv-quote-closed-rows-later",
        "p.csv",
        'prompt,id\nhello,1\n"unterminated,2\nthird,3\n"fourth",4\nfifth,5\n',
        "p.csv line 3: bad CSV (',' expected after '\"')",
    ),
    (
        "csv-seed-5000-digits",
        "p.csv",
        "prompt,seed\na," + "9" * 5000 + "\n",
        "p.csv row 1: seed must be < 2**63, got a number of 5000 digits",
    ),
    (
        "jsonl-key-twice",
        "p.jsonl",
        '{"prompt": "a", "prompt": "b"}\n',
        "p.jsonl line 1: key 'prompt' is given twice in one object",
    ),
    (
        "csv-short-row",
        "p.csv",
        "prompt,id\nhello,1\nbye\n",
        "p.csv row 2 (line 3): 1 field(s), fewer than the header's 2",
    ),
    ("csv-long-row", "p.csv", "prompt,id\nhello,1,2\n", "p.csv row 1 (line 2): 3 field(s), more than the header's 2"),
    ("csv-column-twice", "p.csv", "prompt,prompt\nhello,1\n", "p.csv line 1: column 'prompt' is named twice"),
    ("prompts-a-directory", "pdir/", "", "prompts.file: pdir is a directory, not a prompt file"),
    ("prompts-a-directory-named-jsonl", "p.jsonl/", "", "prompts.file: p.jsonl is a directory, not a prompt file"),
]

# A diffusers FLUX folder that looks complete but cannot be loaded (weights that are not safetensors).
FLUX_INDEX = {
    "_class_name": "FluxPipeline",
    "_diffusers_version": "0.35.0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
CORRUPT_FLUX = {
    "flux/model_index.json": json.dumps(FLUX_INDEX),
    "flux/scheduler/scheduler_config.json": "{}",
    "flux/tokenizer/": "",
    "flux/tokenizer_2/": "",
    **{f"flux/{d}/config.json": "{}" for d in ("transformer", "vae", "text_encoder", "text_encoder_2")},
    **{f"flux/{d}/diffusion_pytorch_model.safetensors": b"not safetensors" for d in ("transformer", "vae")},
    **{f"flux/{d}/model.safetensors": b"not safetensors" for d in ("text_encoder", "text_encoder_2")},
}

S3_JOB = with_lines(
    "output: {dir: 's3://bucket/out'}",
    f"storage: {{endpoint_url: '{DOWN}', key: {KEY}, secret: {SECRET}}}",
)
S3_PROMPTS_JOB = with_lines(
    "prompts: {file: 's3://bucket/prompts.jsonl'}",
    f"storage: {{endpoint_url: '{DOWN.replace('//', f'//{KEY}:{SECRET}@')}', key: {KEY}, secret: {SECRET}}}",
)
UNREACHABLE = f"the S3 endpoint {DOWN} could not be reached (connection refused)"

NOT_UTF8 = GOOD.encode() + b"name: caf\xe9\n"
S3_SETTINGS = {"job.yaml": S3_JOB}
RUN = "s3://bucket/out/t"
CASES: list[Case] = [
    *(c for name, text, words in JOB_FILES for c in job_cases(name, text, words, NO_SECRETS)),
    *(c for name, filename, content, words in PROMPT_FILES for c in prompt_cases(name, filename, content, words)),
    Case(
        "not-utf8",
        ["validate", "job.yaml"],
        {"job.yaml": NOT_UTF8},
        ["not UTF-8 text (byte 0xe9 at line 8, column 10)"],
    ),
    Case(
        "set-storage-without-equals",
        ["validate", "job.yaml", "--set", "storage.secret:hunter2pass"],
        {"job.yaml": GOOD},
        ["--set: expected key.path=value, got a storage setting (not shown)"],
        ["hunter2pass"],
    ),
    Case(
        "set-storage-secret-a-number",
        ["run", "job.yaml", "--set", "storage.token=918273645"],
        {"job.yaml": GOOD},
        ["storage.token: expected a string or null, got an integer (not shown"],
        ["918273645"],
    ),
    Case("job-a-directory", ["run", "jobs"], {"jobs/": ""}, ["jobs: is a directory, not a job file"]),
    Case(
        "output-a-file",
        ["run", "job.yaml"],
        {"job.yaml": GOOD, "out": "precious"},
        ["output.dir: cannot use", "Not a directory"],
    ),
    # an S3 endpoint that is down: one line naming it (without credentials) after one short connection attempt
    *(
        Case(f"s3-down-{cmd}", [cmd, "job.yaml"], S3_SETTINGS, [UNREACHABLE], [KEY, SECRET], timeout=30)
        for cmd in ("validate", "run")
    ),
    *(
        Case(
            f"s3-down-prompts-{cmd}",
            [cmd, "job.yaml"],
            {"job.yaml": S3_PROMPTS_JOB},
            ["storage.endpoint_url: the S3 endpoint http://<redacted>@127.0.0.1:"],
            [KEY, SECRET],
            timeout=30,
        )
        for cmd in ("validate", "run")
    ),
    Case(
        "s3-down-inspect",
        ["inspect", RUN, "--job", "job.yaml", "--no-sheet"],
        S3_SETTINGS,
        [UNREACHABLE],
        [KEY, SECRET],
        timeout=30,
    ),
    Case("s3-down-report", ["report", RUN, "--job", "job.yaml"], S3_SETTINGS, [UNREACHABLE], [KEY, SECRET], timeout=30),
    Case(
        "s3-down-from-environment",
        ["inspect", RUN, "--no-sheet"],
        {},
        [f"AWS_ENDPOINT_URL: {UNREACHABLE}"],
        env={"AWS_ENDPOINT_URL": DOWN, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET},
        timeout=30,
    ),
    # a model folder that cannot be loaded: the one line and nothing from the libraries before it
    Case(
        "flux-folder-corrupt",
        ["validate", "job.yaml"],
        {"job.yaml": with_lines("model: {name: flux, options: {path: flux, height: 32, width: 32}}"), **CORRUPT_FLUX},
        ["model.path: cannot load a FLUX from folder", "flux"],
        ["torchvision", "accelerate", "Loading"],
        timeout=120,
    ),
    Case(
        "clip-folder-corrupt",
        ["validate", "job.yaml"],
        {
            "job.yaml": with_lines("reward: {name: clip_score, options: {path: clip}}"),
            "clip/config.json": '{"model_type": "clip_text_model"}',  # transformers warns about the type first
            "clip/model.safetensors": b"not safetensors",
            "clip/preprocessor_config.json": "{}",
        },
        ["reward.path: cannot load a CLIP model from 'clip'"],
        ["You are using a model of type"],
        timeout=120,
    ),
]


# A good run whose storage settings hold secrets under every kind of name (camelCase, nested, a number), then its
# report and inspect: no secret value anywhere in what was written or printed; the harmless settings shown.
SSE_KEY, SESSION, NUMBER = "c3NlLWMtdGVzdC1rZXktb2YtMzItYnl0ZXM=", "FwoGZXIvYXdzEHardening", 918273645
SECRETS_RUN = Case(
    "secrets-by-value",
    ["run", "job.yaml"],
    {
        "job.yaml": with_lines(
            "storage:\n"
            "  key: AKIAHARDENINGKEY0001\n"
            "  secret: hardening-secret-Vb61\n"
            "  options:\n"
            f"    s3_additional_kwargs: {{SSECustomerKey: '{SSE_KEY}', SSECustomerAlgorithm: AES256}}\n"
            f"    SessionToken: {SESSION}\n"
            f"    config_kwargs: {{x_custom: {NUMBER}}}\n"
            "    client_kwargs: {region_name: eu-west-1}"
        )
    },
    [],
    then=[["report", "out/t", "--out", "report.html"], ["inspect", "out/t", "--no-sheet"]],
)
SECRET_VALUES = [KEY, SECRET, SSE_KEY, SESSION, str(NUMBER), "AES256"]

# A finished run, then bad calls on the same output folder: each is refused and the run is left as it was.
AFTER_A_RUN = [
    ("held-out-wrong-dimension", "held_out: {name: negative_distance, options: {target: [1, 2, 3]}}"),
    ("model-not-a-model", "model: {name: 'os:getcwd'}"),
    ("csv-quote-never-closed", "prompts: {file: p.csv}"),
    ("jsonl-nested", "prompts: {file: deep.jsonl}"),
    ("steps-billion", "sampler: {preset: linear-sde, steps: 1000000000}"),
]
FINISHED_RUN = Case(
    "finished-run-then-bad-calls",
    ["run", "good.yaml"],
    {
        "good.yaml": GOOD,
        "p.csv": 'prompt\nhello\n"never closed\nbye\n',
        "deep.jsonl": '{"prompt": "a", "m": ' + "[" * DEEP + "]" * DEEP + "}\n",
        **{f"{name}.yaml": with_lines(line) for name, line in AFTER_A_RUN},
    },
    [],
    then=[[cmd, f"{name}.yaml"] for name, _ in AFTER_A_RUN for cmd in ("validate", "run")],
)


def _serve(spec_path: str) -> None:
    """The batch process: import the package once, then run each step of each case in a forked child of its own
    (the case's folder and environment, its own stdout and stderr), killed at its timeout. Writes
    {id: [{rc, stdout, stderr} per step]}."""
    import flowscale_ray.cli as cli
    import flowscale_ray.run  # noqa: F401  (what every job command imports, shared by the children)
    from flowscale_ray.config import job_adapter

    job_adapter()  # built once here, not in every child
    spec = json.loads(Path(spec_path).read_text())
    results = {}
    for case in spec["cases"]:
        folder = Path(case["folder"])
        results[case["id"]] = [
            _child(cli.main, folder, argv, case["env"], case["timeout"], n) for n, argv in enumerate(case["steps"])
        ]
    Path(spec["results"]).write_text(json.dumps(results))


def _child(main, folder: Path, argv: list[str], env: dict[str, str], timeout: float, n: int) -> dict:
    out, err = folder / f".stdout-{n}", folder / f".stderr-{n}"
    pid = os.fork()
    if pid == 0:  # the child: a flowscale process of its own
        code = 1
        try:
            os.chdir(folder)
            os.environ.update(env)
            for fd, path in ((1, out), (2, err)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            sys.argv = ["flowscale", *argv]
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # what Python itself would do with an uncaught exception
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc: int | str = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            rc = "timeout"
            break
        time.sleep(0.01)
    result = {"rc": rc, "stdout": out.read_text(errors="replace"), "stderr": err.read_text(errors="replace")}
    result["written"] = written(folder / "out")
    out.unlink()
    err.unlink()
    return result


def written(root: Path) -> dict[str, str]:
    """Every file under `root` with the SHA-256 of its bytes."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def write_files(folder: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = folder / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every case of CASES run once: {id: (folder, {rc, stdout, stderr})}."""
    root = tmp_path_factory.mktemp("corpus")
    folders, spec = {}, []
    for case in [*CASES, SECRETS_RUN, FINISHED_RUN]:
        folder = root / case.id
        folder.mkdir()
        write_files(folder, case.files)
        folders[case.id] = folder
        steps = [case.argv, *case.then]
        spec.append({"id": case.id, "folder": str(folder), "steps": steps, "env": case.env, "timeout": case.timeout})
    (root / "spec.json").write_text(json.dumps({"cases": spec, "results": str(root / "results.json")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", AWS_EC2_METADATA_DISABLED="true")
    code = "import sys; from tests.test_hardening import _serve; _serve(sys.argv[1])"
    budget = sum(c.timeout * (1 + len(c.then)) for c in [*CASES, SECRETS_RUN, FINISHED_RUN]) + 60
    argv = [sys.executable, "-c", code, str(root / "spec.json")]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=budget)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    return {cid: (folders[cid], result) for cid, result in results.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(corpus, case):
    folder, (result,) = corpus[case.id]
    err = result["stderr"]
    assert result["rc"] == 2, (result["rc"], err[-2000:])
    assert err.count("\n") == 1 and err.startswith("flowscale: error: ") and "Traceback" not in err, err[-2000:]
    for words in case.words:
        assert words in err, err
    for words in case.absent:
        assert words not in err + result["stdout"], words
    assert not re.search(r"\b[A-Z]\w*Config\b|__\w+__\(\)", err), err  # no internal class or function names
    if "out" in case.files:
        assert (folder / "out").read_bytes() == (case.files["out"].encode())  # left alone
    else:
        assert not (folder / "out").exists()


def test_the_cases_are_what_they_say():
    """Each job document is valid YAML apart from what it tests (so the line is about that); each case is unique."""
    for name, text, _ in JOB_FILES:
        if name.startswith(("duplicate", "alias-bomb", "yaml-")):
            continue
        assert isinstance(yaml.safe_load(text), dict), name
    assert len({c.id for c in CASES}) == len(CASES)
    assert json.loads(PROMPT_FILES[5][2].splitlines()[0]) == {"prompt": "a"}  # only line 2 is deep


def test_a_closed_pipe_ends_quietly(tmp_path):
    (tmp_path / "job.yaml").write_text(GOOD)
    assert flowscale("run", "job.yaml", cwd=tmp_path).returncode == 0
    proc = subprocess.run(
        f"{sys.executable} -m flowscale_ray inspect out/t --no-sheet | head -1",
        shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.stdout.startswith("run t at out/t") and proc.stderr == "", proc.stderr


def test_storage_secrets_are_redacted_by_value_everywhere(corpus):
    folder, steps = corpus[SECRETS_RUN.id]
    assert [step["rc"] for step in steps] == [0, 0, 0], [step["stderr"][-1000:] for step in steps]
    printed = "".join(step["stdout"] + step["stderr"] for step in steps)
    written = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "job.yaml"}
    assert folder / "report.html" in written and any(b"eu-west-1" in data for data in written.values())
    for secret in SECRET_VALUES:
        assert secret not in printed, secret
        for path, data in written.items():
            assert secret.encode() not in data, (secret, path)


def test_a_finished_run_is_left_alone_by_bad_calls(corpus):
    _, (first, *later) = corpus[FINISHED_RUN.id]
    assert first["rc"] == 0 and first["written"], first["stderr"][-2000:]
    for step, argv in zip(later, FINISHED_RUN.then, strict=True):
        err = step["stderr"]
        assert step["rc"] == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, err[-2000:])
        assert step["written"] == first["written"], argv  # every file of the run, byte for byte
