"""What the FLUX and SD3 adapters share: option checks, device/dtype, folder checks, loading, prompt cache,
and the model base class (`DiffusersFlowModel`: the pipeline on its device, cached encodings, VAE decoding).

diffusers is imported only inside functions (it costs seconds to import), so registering these models
costs nothing until one is built.

The sampler owns the time grid. diffusers' FlowMatchEulerDiscreteScheduler maps its sigmas through the
timestep shift s -> a s / (1 + (a - 1) s) (static `shift` a for SD3, a = exp(mu) with mu from the image
sequence length for FLUX.1-dev's dynamic shift); our `sampler.shift` applies the same map to our grid, so
`sampler: {grid: uniform, shift: <model.grid_shift>}` reproduces the pipeline's schedule. `sampler_shift`
computes that value from the model's folder (JSON configs only) for drivers that have no model loaded.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import os
import re
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowscale_ray.errors import first_line
from flowscale_ray.models.base import Condition, FlowModel, cat_conditions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+|auto)$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def resolve_device(device: str | torch.device, field: str = "model.device") -> torch.device:
    """cpu | cuda | cuda:N | auto (cuda when available, else cpu)."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str) or not DEVICE_RE.match(device):
        raise ValueError(f"{field}: expected cpu, cuda, cuda:N or auto, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{field}: {device!r} asked for but CUDA is not available on this machine")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, field: str = "model.dtype") -> torch.dtype:
    """float32 | bfloat16 | float16; default bfloat16 on CUDA, float32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"{field}: expected one of {', '.join(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"{field}: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def allowed_attention_backends() -> list[str]:
    """diffusers attention backends that need no download (the *_hub ones fetch kernels from the hub)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(b.value for b in AttentionBackendName if not b.value.endswith("_hub"))


def check_attention(backend: str | None, field: str = "model.attention") -> None:
    if backend is None:
        return
    allowed = allowed_attention_backends()
    if backend not in allowed:
        raise ValueError(f"{field}: unknown attention backend {backend!r}; allowed: {', '.join(allowed)}")


def set_attention(module: Any, backend: str | None, field: str = "model.attention") -> None:
    """Select the diffusers attention backend of a transformer (None: the library default, torch SDPA)."""
    check_attention(backend, field)
    if backend is None:
        return
    try:
        module.set_attention_backend(backend)
    except Exception as exc:  # missing kernels or packages: one line naming the backend
        raise ValueError(f"{field}: backend {backend!r} is not usable here: {_first_line(exc)}") from None


def is_local_path(path: str) -> bool:
    """A path (exists, or is written as one) rather than a hub id 'org/name'."""
    p = Path(path).expanduser()
    return p.exists() or path.startswith((".", "/", "~")) or os.sep + os.sep in path or not HUB_ID_RE.match(path)


def check_model_folder(path: str, kind: str, expected: Sequence[str], field: str = "model.path") -> Path:
    """Fail with one line naming the folder and its expected layout unless it looks loadable."""
    subfolders = ", ".join(e + "/" for e in expected)
    layout = f"a diffusers {kind} folder: model_index.json, {subfolders} (weights as .safetensors)"
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ValueError(f"{field}: no such folder {str(folder)!r}; expected {layout}")
    if not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK):
        raise ValueError(f"{field}: {str(folder)!r} is not a readable folder; expected {layout}")
    missing = [e for e in ("model_index.json", *expected) if not (folder / e).exists()]
    if missing:
        raise ValueError(f"{field}: {str(folder)!r} lacks {', '.join(missing)}; expected {layout}")
    try:
        json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{field}: cannot read {str(folder / 'model_index.json')!r}: {_first_line(exc)}") from None
    for sub in expected:
        if sub in WEIGHT_SUBFOLDERS and not any((folder / sub).glob("*.safetensors")):
            raise ValueError(f"{field}: {str(folder / sub)!r} has no .safetensors weights; expected {layout}")
    return folder


_LIBRARIES = ("transformers", "diffusers", "huggingface_hub", "accelerate")


@contextlib.contextmanager
def quiet_libraries(capture_stderr: bool = False) -> Iterator[None]:
    """Within the block the model libraries say nothing: their loggers (transformers, diffusers, huggingface_hub,
    accelerate) are muted, their progress bars off and Python warnings ignored; with `capture_stderr`, what they
    print on stderr themselves is swallowed too. Everything is restored after the block. Loading a model folder
    runs inside it, so a folder that cannot be loaded gives our one line and nothing before it (library
    warnings about optional packages, load reports, progress bars)."""
    import importlib

    restore: list[Callable[[], None]] = []
    for name in _LIBRARIES:
        lib_logging = None
        if name in ("transformers", "diffusers"):  # their own logging configures the logger (and its level)
            with contextlib.suppress(ImportError):
                lib_logging = importlib.import_module(f"{name}.utils.logging")
        logger = logging.getLogger(name)
        level = logger.level
        logger.setLevel(logging.CRITICAL + 1)
        restore.append(functools.partial(logger.setLevel, level))
        if lib_logging is not None and lib_logging.is_progress_bar_enabled():
            lib_logging.disable_progress_bar()
            restore.append(lib_logging.enable_progress_bar)
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
            restore.append(enable_progress_bars)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if capture_stderr:
                with contextlib.redirect_stderr(io.StringIO()):
                    yield
            else:
                yield
    finally:
        for undo in reversed(restore):
            undo()
        sys.stderr.flush()


def load_pipeline(cls: Any, path: str, kind: str, expected: Sequence[str], dtype: torch.dtype) -> Any:
    """`cls.from_pretrained(path, dtype=dtype, use_safetensors=True)`, errors as one line."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"model.path: expected a hub id or a local folder, got {path!r}")
    source = str(check_model_folder(path, kind, expected)) if is_local_path(path) else path
    try:
        with quiet_libraries(capture_stderr=True):
            pipe = cls.from_pretrained(source, dtype=dtype, use_safetensors=True)
    except Exception as exc:
        what = f"folder {source!r}" if is_local_path(path) else f"hub id {path!r} (offline: it must be in the HF cache)"
        why = _first_line(exc)
        if "ignore_mismatched_sizes" in why:  # transformers points at a load report, which was not printed
            why = "its weights do not match the sizes in its config.json (a file from another model?)"
        raise ValueError(f"model.path: cannot load a {kind} from {what}: {why}") from None
    pipe.set_progress_bar_config(disable=True)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval().requires_grad_(False)
    # from_pretrained leaves some diffusers transformers (SD3 in 0.42) in float32 whatever the dtype.
    for name in ("transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and module.dtype != dtype:
            module.to(dtype=dtype)
    return pipe


def read_json(path: str, *parts: str) -> dict[str, Any]:
    """A JSON config of a model folder, or of a hub id already in the local HF cache (no weights, no download)."""
    file = Path(path).expanduser().joinpath(*parts)
    if not is_local_path(path):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "/".join(parts))
        if not isinstance(cached, str):
            raise ValueError(f"model.path: {'/'.join(parts)} of hub id {path!r} is not in the local HF cache")
        file = Path(cached)
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"model.path: cannot read {str(file)!r}: {_first_line(exc)}") from None


def dynamic_shift(image_seq_len: int, scheduler_config: dict[str, Any]) -> float:
    """FLUX.1-dev's resolution shift as a grid shift a (exp(mu), or mu for time_shift_type 'linear')."""
    base_len = scheduler_config.get("base_image_seq_len", 256)
    max_len = scheduler_config.get("max_image_seq_len", 4096)
    base_shift = scheduler_config.get("base_shift", 0.5)
    max_shift = scheduler_config.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    mu = image_seq_len * m + (base_shift - m * base_len)
    return mu if scheduler_config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)


class PromptCache:
    """Prompt text -> one condition row, least recently used dropped beyond `size` entries.

    `encode_batch(texts)` computes the rows of prompts not cached yet, in one call.
    """

    def __init__(self, encode_batch: Callable[[list[str]], Condition], size: int = 1024) -> None:
        self.encode_batch = encode_batch
        self.size = size
        self.rows: OrderedDict[str, Condition] = OrderedDict()

    def __call__(self, prompts: Sequence[str]) -> Condition:
        missing = list(dict.fromkeys(p for p in prompts if p not in self.rows))
        if missing:
            cond = self.encode_batch(missing)
            for i, p in enumerate(missing):
                self.rows[p] = {k: v[i : i + 1] for k, v in cond.items()}
        out = []
        for p in prompts:
            self.rows.move_to_end(p)
            out.append(self.rows[p])
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)
        return cat_conditions(out)


def decode_latents(vae: Any, latents: Tensor, batch: int = 8) -> Tensor:
    """VAE latents (already unscaled) -> images [B, 3, H, W] in [0, 1], float32, decoded in chunks."""
    out = []
    for start in range(0, latents.shape[0], batch):
        chunk = latents[start : start + batch].to(vae.device, vae.dtype)
        image = vae.decode(chunk, return_dict=False)[0]
        out.append((image.float() / 2 + 0.5).clamp(0, 1))
    return torch.cat(out) if out else latents.new_zeros((0, 3, 0, 0), dtype=torch.float32)


def check_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    for field, v in (("model.height", height), ("model.width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % multiple:
            raise ValueError(f"{field}: must be a positive multiple of {multiple}, got {v!r}")
    return height, width


def check_positive_int(field: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{field}: must be a positive integer, got {value!r}")
    return value


def _first_line(exc: BaseException) -> str:
    return first_line(exc, typed=False)


def load_checked(
    pipeline_cls: Any,
    path: str,
    label: str,
    layout: Any,
    dtype: str | None,
    device: str,
    resolution_shift: bool,
    attention: str | None,
    max_sequence_length: int,
) -> tuple[Any, torch.device, torch.dtype]:
    """What both adapters do before building their model: check the shared options, load the pipeline's
    components from `path` and set the attention backend. Returns (pipeline, device, dtype)."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if not isinstance(resolution_shift, bool):
        raise ValueError(f"model.resolution_shift: expected true or false, got {resolution_shift!r}")
    check_positive_int("model.max_sequence_length", max_sequence_length)
    check_attention(attention)
    pipe = load_pipeline(pipeline_cls, path, label, layout, torch_dtype)
    set_attention(pipe.transformer, attention)
    return pipe, dev, torch_dtype


class DiffusersFlowModel(FlowModel):
    """What a loaded FLUX or SD3 pipeline has in common behind the model contract: the pipeline on its device,
    its transformer and VAE, prompt encodings computed once per prompt (`_encode_batch`, cached), and decoding
    with the VAE's scaling and shift. Subclasses implement `_encode_batch` and `velocity`."""

    def __init__(
        self, pipe: Any, max_sequence_length: int, device: torch.device, dtype: torch.dtype, model_id: str
    ) -> None:
        self.pipe = pipe.to(device)
        self.device, self.dtype, self.model_id = device, dtype, model_id
        self.transformer, self.vae = pipe.transformer, pipe.vae
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.max_sequence_length = max_sequence_length
        self.prompt_cache = PromptCache(self._encode_batch)

    def _encode_batch(self, prompts: list[str]) -> Condition:
        raise NotImplementedError

    def encode(self, prompts: Sequence[str]) -> Condition:
        return self.prompt_cache(prompts)

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        cfg = self.vae.config
        return decode_latents(self.vae, x0.float() / cfg.scaling_factor + cfg.shift_factor)
