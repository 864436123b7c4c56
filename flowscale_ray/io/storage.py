"""Filesystems for prompts and outputs: any fsspec URI, with S3 settings from the job file or the environment.

    fs, path = open_filesystem("s3://bucket/prefix", storage)    # s3fs.S3FileSystem, "bucket/prefix"
    fs, path = open_filesystem("results", storage, base_dir)     # LocalFileSystem, absolute path

S3 (`s3://`) goes through s3fs. Its endpoint, credentials and options come from the job file's `storage`
section, else from the standard AWS variables (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, and the
credential chain botocore reads itself: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
profiles). Credentials never leave this module in the clear: `Redactor` scrubs every secret it knows of
(from the job file and from those variables) out of any text bound for a log, a row or the manifest, and
`describe_storage` gives the settings with the secrets replaced.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from flowscale_ray.config import StorageConfig

REDACTED = "<redacted>"
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s]+)@")
_SECRET_KEYS = re.compile(r"(^|_)(key|secret|token|password|passwd|credentials?|key_id)$", re.IGNORECASE)

T = TypeVar("T")


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def resolve_local(uri: str, base_dir: Path | None) -> str:
    """A relative local path is taken from the current directory, else from the job file's directory."""
    if "://" in uri:
        return uri
    path = Path(uri).expanduser()
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = base_dir / path
    return str(path.absolute())


def s3_options(storage: StorageConfig) -> dict[str, Any]:
    """Keyword arguments for s3fs.S3FileSystem."""
    opts: dict[str, Any] = dict(storage.options)
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts.setdefault("endpoint_url", endpoint)
    if storage.key is not None:
        opts["key"] = storage.key
    if storage.secret is not None:
        opts["secret"] = storage.secret
    if storage.token is not None:
        opts["token"] = storage.token
    if storage.anon:
        opts["anon"] = True
    opts.setdefault("skip_instance_cache", True)  # settings differ between jobs in one process
    return opts


def open_filesystem(uri: str, storage: StorageConfig | None = None, base_dir: Path | None = None):
    """(filesystem, path inside it) for a local path or an fsspec URI."""
    import fsspec

    storage = storage or StorageConfig()
    uri = resolve_local(uri, base_dir)
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    if protocol in ("s3", "s3a"):
        import s3fs

        fs = s3fs.S3FileSystem(**s3_options(storage))
        return fs, fs._strip_protocol(uri)
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage.options))
    return fs, path


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


class Redactor:
    """Replaces known secrets (job-file credentials, AWS variables, URL user-info) in text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= 4}
        values |= {os.environ[k] for k in SECRET_ENV if len(os.environ.get(k, "")) >= 4}
        self._secrets = sorted(values, key=len, reverse=True)

    @classmethod
    def for_storage(cls, storage: StorageConfig | None) -> Redactor:
        if storage is None:
            return cls()
        nested = [v for k, v in _walk(storage.options) if _SECRET_KEYS.search(k) and isinstance(v, str)]
        return cls([storage.key, storage.secret, storage.token, *nested])

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, REDACTED)
        return _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)

    def value(self, obj: Any) -> Any:
        """Redact every string inside a JSON-like value; values under secret-looking keys entirely."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, dict):
            return {
                k: (REDACTED if _SECRET_KEYS.search(str(k)) and v not in (None, False) else self.value(v))
                for k, v in obj.items()
            }
        if isinstance(obj, list | tuple):
            return [self.value(v) for v in obj]
        return obj


def _walk(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k), v
            yield from _walk(v, str(k))
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _walk(v, prefix)


def describe_storage(storage: StorageConfig) -> dict[str, Any]:
    """The storage settings as recorded in the manifest: secrets replaced, never the values."""
    redact = Redactor.for_storage(storage)
    return {
        "endpoint_url": redact(storage.endpoint_url) if storage.endpoint_url else None,
        "key": REDACTED if storage.key else None,
        "secret": REDACTED if storage.secret else None,
        "token": REDACTED if storage.token else None,
        "anon": storage.anon,
        "retries": storage.retries,
        "options": redact.value(dict(storage.options)),
    }


# -- retries ------------------------------------------------------------------------------------------------
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: network and server-side failures, not missing files or bad credentials."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(("botocore", "aiobotocore", "aiohttp", "urllib3", "http.client"))


def retry(
    op: Callable[[], T],
    what: str,
    attempts: int,
    log: Callable[[str], None] | None = None,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
) -> T:
    """Run `op` (which must be safe to repeat), retrying transient storage errors with jittered backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return op()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            if log is not None:
                log(f"storage: {what} failed ({type(exc).__name__}); retry {attempt}/{attempts - 1} in {delay:.2f}s")
            time.sleep(delay)
    raise AssertionError("unreachable")
