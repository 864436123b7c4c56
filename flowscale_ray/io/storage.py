"""Filesystems for prompts and outputs: any fsspec URI, with S3 settings from the job file or the environment.

    fs, path = open_filesystem("s3://bucket/prefix", storage)    # s3fs.S3FileSystem, "bucket/prefix"
    fs, path = open_filesystem("results", storage, base_dir)     # LocalFileSystem, absolute path

S3 (`s3://`) goes through s3fs. Its endpoint, credentials and options come from the job file's `storage`
section, else from the standard AWS variables (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, and the
credential chain botocore reads itself: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
profiles). Credentials never leave this module in the clear: every value under the job's `storage` section is a
secret unless it is on a short allowlist of harmless settings (config.HARMLESS_STORAGE_SETTINGS); `Redactor`
scrubs those values (and the AWS credential variables, and URL user-info) out of any text bound for a log, an
error, a row or the manifest, and `describe_storage` gives the settings with the secrets replaced.

Before the first S3 request, a job with no credentials anywhere is refused (`check_credentials`), and the endpoint
(the job's or the environment's, else AWS's own for the region) gets one short TCP connection (`check_reachable`),
so an endpoint that is down is one line naming it, not minutes of retries and a botocore traceback.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from flowscale_ray.config import HARMLESS_STORAGE_SETTINGS, StorageConfig

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

        check_credentials(storage)
        check_reachable(*s3_endpoint(storage), Redactor.for_storage(storage))
        fs = s3fs.S3FileSystem(**s3_options(storage))
        return fs, fs._strip_protocol(uri)
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage.options))
    return fs, path


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


class Redactor:
    """Replaces secrets in text: every value under the job's `storage` section that is not on the allowlist of
    harmless settings (config.HARMLESS_STORAGE_SETTINGS), whatever its key is called or how deep it sits; the
    user-info of any URL there; the AWS credential variables; and `scheme://user:password@` in any URL."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= 4}
        values |= {os.environ[k] for k in SECRET_ENV if len(os.environ.get(k, "")) >= 4}
        self._secrets = sorted(values, key=len, reverse=True)

    @classmethod
    def for_storage(cls, storage: StorageConfig | None) -> Redactor:
        if storage is None:
            return cls()
        secrets: list[str] = []
        for path, value in _settings(storage):
            if isinstance(value, str) and "@" in value:  # a URL's user-info, even without a scheme
                userinfo = value.split("://", 1)[-1].rsplit("@", 1)[0]
                secrets += [userinfo, userinfo.partition(":")[2]]  # all of it, and the password alone
            if not _harmless(path) and value is not None and not isinstance(value, bool):
                secrets.append(str(value))
        return cls(secrets)

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
                k: (REDACTED if is_secret_key(str(k)) and v not in (None, False) else self.value(v))
                for k, v in obj.items()
            }
        if isinstance(obj, list | tuple):
            return [self.value(v) for v in obj]
        return obj


def is_secret_key(key: str) -> bool:
    """A key that names a credential wherever it appears ('api_key', 'SessionToken', 'SSECustomerKey', ...)."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()
    return bool(_SECRET_KEYS.search(snake))


def _harmless(path: str) -> bool:
    return path in HARMLESS_STORAGE_SETTINGS


def _settings(storage: StorageConfig) -> Iterable[tuple[str, Any]]:
    """(path below `storage`, value) of every leaf setting; a list counts as one leaf."""
    top = {
        "endpoint_url": storage.endpoint_url,
        "key": storage.key,
        "secret": storage.secret,
        "token": storage.token,
        "anon": storage.anon,
        "retries": storage.retries,
    }
    yield from top.items()
    yield from _leaves(storage.options, "options")


def _leaves(obj: Any, prefix: str) -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}.{k}")
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _leaves(v, prefix)
    else:
        yield prefix, obj


def _described(obj: Any, prefix: str, redact: Redactor) -> Any:
    if isinstance(obj, dict):
        return {k: _described(v, f"{prefix}.{k}", redact) for k, v in obj.items()}
    if obj is None:
        return None
    if _harmless(prefix):
        return redact(obj) if isinstance(obj, str) else obj
    return REDACTED


def describe_storage(storage: StorageConfig) -> dict[str, Any]:
    """The storage settings as recorded in `_run.json` and the manifest: every value that is not on the allowlist
    of harmless settings replaced by '<redacted>' (null stays null); URLs without their user-info."""
    redact = Redactor.for_storage(storage)
    return {
        "endpoint_url": _described(storage.endpoint_url, "endpoint_url", redact),
        "key": _described(storage.key, "key", redact),
        "secret": _described(storage.secret, "secret", redact),
        "token": _described(storage.token, "token", redact),
        "anon": storage.anon,
        "retries": storage.retries,
        "options": _described(dict(storage.options), "options", redact),
    }


# -- is the endpoint there? -----------------------------------------------------------------------------------
PROBE_TIMEOUT_S = 5.0
_reached: set[tuple[str, int]] = set()  # endpoints this process has reached


def s3_endpoint(storage: StorageConfig) -> tuple[str, str]:
    """(the S3 endpoint URL a job uses, where it was set); AWS's own endpoint for the region when none is set."""
    client_kwargs = storage.options.get("client_kwargs")
    candidates = [
        ("storage.endpoint_url", storage.endpoint_url),
        ("storage.options.endpoint_url", storage.options.get("endpoint_url")),
        (
            "storage.options.client_kwargs.endpoint_url",
            client_kwargs.get("endpoint_url") if isinstance(client_kwargs, dict) else None,
        ),
        ("AWS_ENDPOINT_URL_S3", os.environ.get("AWS_ENDPOINT_URL_S3")),
        ("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL")),
    ]
    for where, url in candidates:
        if isinstance(url, str) and url:
            return url, where
    region = (
        storage.options.get("region_name")
        or (client_kwargs.get("region_name") if isinstance(client_kwargs, dict) else None)
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    if isinstance(region, str) and region:
        host = f"s3.{region}.amazonaws.com" + (".cn" if region.startswith("cn-") else "")
    else:
        host = "s3.amazonaws.com"
    return f"https://{host}", "storage.endpoint_url (not set: AWS's own)"


_CREDENTIAL_OPTIONS = ("key", "secret", "token", "profile", "anon", "session")
_found_credentials: set[str | None] = set()  # profiles whose credentials this process has found


def check_credentials(storage: StorageConfig) -> None:
    """Refuse (ConfigError, one line) an S3 job that has no credentials anywhere: not in the job file, not in the
    AWS variables, profiles or the instance's role; botocore would raise NoCredentialsError at the first request
    instead. Skipped for anonymous access and for credentials given to s3fs in `storage.options`."""
    from flowscale_ray.config import ConfigError

    if storage.anon or storage.key or storage.secret or storage.token:
        return
    if any(k in storage.options for k in _CREDENTIAL_OPTIONS):
        return
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return
    profile = os.environ.get("AWS_PROFILE")
    if profile in _found_credentials:
        return
    import botocore.exceptions
    import botocore.session

    try:
        credentials = botocore.session.Session().get_credentials()
    except botocore.exceptions.BotoCoreError as exc:  # a profile that does not exist, a broken config file
        raise ConfigError("storage", f"cannot read the AWS credentials: {Redactor()(str(exc))}") from None
    if credentials is None:
        raise ConfigError(
            "storage",
            "no S3 credentials found: set storage.key and storage.secret, the AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY variables or an AWS profile, or storage.anon: true for a public bucket",
        )
    _found_credentials.add(profile)


def check_reachable(url: str, where: str, redact: Callable[[str], str]) -> None:
    """Refuse (ConfigError, one line) an endpoint nothing listens on, with one TCP connection of at most
    PROBE_TIMEOUT_S seconds: otherwise botocore's and s3fs's retries would spend minutes before a traceback.
    Skipped when a proxy carries the requests (the proxy reaches the endpoint, not this process)."""
    import socket
    import urllib.parse
    import urllib.request

    from flowscale_ray.config import ConfigError

    parts = urllib.parse.urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        host, port = None, None
    if not host:
        raise ConfigError(where, f"{redact(url)} names no host; expected a URL such as http://127.0.0.1:9000")
    port = port or (443 if parts.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    if (key := (host, port)) in _reached or (proxies.get(parts.scheme) and not urllib.request.proxy_bypass(host)):
        return
    try:
        with socket.create_connection(key, timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        if isinstance(exc, socket.gaierror):
            reason = f"no such host {host!r}"
        elif isinstance(exc, TimeoutError | socket.timeout):
            reason = f"no answer within {PROBE_TIMEOUT_S:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            reason = "connection refused"
        else:
            reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            where,
            f"the S3 endpoint {redact(url)} could not be reached ({reason}); check that the server is up and "
            "the URL is right",
        ) from None
    _reached.add(key)


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
