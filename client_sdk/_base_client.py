"""HTTP plumbing under `FedTuneClient`: TLS, auth, retries, error mapping, transfers.

The retry decision is split into small methods the way openai-python does it:
`_should_retry` says whether an error is worth another attempt, `_retry_delay`
says how long to wait (`Retry-After` first, then capped, jittered exponential
backoff). Retries of one call go on until `retry_for_s` has passed since its
first failure (and, if set, until `max_retries` ran out). One idempotency key
is reused across all attempts of one call.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from tqdm import tqdm

from client_sdk import _constants as C
from client_sdk._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    FedTuneError,
    InsecureTransportError,
    make_status_error,
)

__all__ = ["BaseClient", "Download"]

log = logging.getLogger("client_sdk")
T = TypeVar("T")


@dataclass(frozen=True)
class Download:
    """Where a downloaded blob landed. `not_modified` means the server answered 304."""

    path: Path
    sha256: str
    size: int
    not_modified: bool
    headers: dict[str, str]


def _check_url(base_url: str, allow_http: bool) -> str:
    try:
        url: httpx.URL | None = httpx.URL(base_url)
    except httpx.InvalidURL:  # a port that is not a number, say
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise InsecureTransportError(f"server URL {base_url!r} must look like https://host[:port]")
    if url.scheme == "http" and not allow_http:
        raise InsecureTransportError(
            f"refusing plain http:// for {base_url}: API keys and model updates would travel "
            "unencrypted; use https:// (with --ca-cert for a private CA), or pass "
            "--insecure-http (allow_http=True) on a network you trust"
        )
    return str(url).rstrip("/")


def _ssl_context(ca_cert: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """Verification is always on; `ca_cert` replaces the system roots with a private CA."""
    if ca_cert is None:
        return ssl.create_default_context()
    path = Path(ca_cert)
    if not path.is_file():
        raise FedTuneError(f"CA certificate {path} does not exist")
    try:
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise FedTuneError(f"CA certificate {path} is not a PEM certificate: {exc}") from None


class BaseClient:
    """Sends requests with auth and retries; maps failures onto the exception tree."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        ca_cert: str | os.PathLike[str] | None = None,
        allow_http: bool = False,
        timeout: httpx.Timeout = C.DEFAULT_TIMEOUT,
        max_retries: int | None = C.DEFAULT_MAX_RETRIES,
        retry_for_s: float = C.DEFAULT_RETRY_FOR_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = _check_url(base_url, allow_http)
        self.api_key = api_key
        self._allow_http, self._ca_cert = allow_http, ca_cert  # for redirects to a blob store
        self.max_retries = max_retries  # None: no limit on the count, only on the time
        self.retry_for_s = retry_for_s
        headers = {"User-Agent": C.USER_AGENT}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            verify=_ssl_context(ca_cert),
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- retry policy ---------------------------------------------------------

    def _should_retry(self, err: FedTuneError) -> bool:
        if isinstance(err, APIConnectionError):
            return err.retryable
        if isinstance(err, APIStatusError):
            return (
                err.status in C.RETRYABLE_STATUSES
                or err.status >= 500
                or (err.status == 409 and err.code in C.TRANSIENT_CONFLICTS)
            )
        return False

    def _retry_after(self, err: FedTuneError) -> float | None:
        """Seconds from a `Retry-After` header (delta-seconds or HTTP date), if usable."""
        if not isinstance(err, APIStatusError):
            return None
        raw = err.response.headers.get("retry-after")
        if raw is None:
            return None
        try:
            seconds = float(raw)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        return seconds if 0 <= seconds < math.inf else None

    def _retry_delay(self, retries_taken: int, err: FedTuneError) -> float:
        retry_after = self._retry_after(err)
        if retry_after is not None:
            return retry_after
        doublings = min(retries_taken, 32)  # past the cap anyway; keeps 2**n a small float
        delay = min(C.INITIAL_RETRY_DELAY_S * 2**doublings, C.MAX_RETRY_DELAY_S)
        return delay * (1 - C.RETRY_JITTER * random.random())

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _clock(self) -> float:
        return time.monotonic()

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """Run `attempt` until it succeeds, fails for good, or the retry budget is spent."""
        retries_taken = 0
        deadline: float | None = None
        while True:
            try:
                return attempt()
            except FedTuneError as err:
                if not self._should_retry(err):
                    raise
                now = self._clock()
                if deadline is None:
                    deadline = now + self.retry_for_s
                left = deadline - now
                out_of_time = left <= 0
                if out_of_time or (
                    self.max_retries is not None and retries_taken >= self.max_retries
                ):
                    if retries_taken:
                        limit = "budget spent" if out_of_time else f"max_retries={self.max_retries}"
                        err.add_note(
                            f"gave up after {retries_taken + 1} attempts over "
                            f"{self.retry_for_s - left:.0f}s (retry {limit})"
                        )
                    raise
                delay = min(self._retry_delay(retries_taken, err), left)
                log.warning(
                    "%s failed (%s); retry %d in %.1fs, %.0fs left of the %gs retry budget",
                    what,
                    err,
                    retries_taken + 1,
                    delay,
                    left,
                    self.retry_for_s,
                )
                self._sleep(delay)
                retries_taken += 1

    # -- one attempt ----------------------------------------------------------

    def _headers(self, extra: dict[str, str] | None, idempotency_key: str) -> dict[str, str]:
        headers = {"Idempotency-Key": idempotency_key}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if extra:
            headers.update(extra)
        return headers

    @contextlib.contextmanager
    def _send(self, request: httpx.Request) -> Iterator[httpx.Response]:
        """Send once, streaming; yield a 2xx/304 response or raise a mapped error."""
        try:
            response = self._http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise APITimeoutError(
                f"request to {request.url} timed out", url=str(request.url)
            ) from exc
        except httpx.TransportError as exc:
            raise _connection_error(exc, request) from exc
        try:
            if response.status_code >= 400:
                raise make_status_error(response)
            yield response
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"reading {request.url} timed out", url=str(request.url)) from exc
        except httpx.TransportError as exc:
            raise _connection_error(exc, request) from exc
        finally:
            response.close()

    def _request_json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """A JSON request with retries; returns the decoded JSON body."""
        key = uuid.uuid4().hex

        def attempt() -> Any:
            request = self._http.build_request(
                method,
                path,
                json=json_body,
                params=params,
                headers=self._headers(None, key),
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            with self._send(request) as response:
                body = response.read()
            return _decode_json(body, f"{method} {path}")

        return self._retrying(f"{method} {path}", attempt)

    def _download(
        self,
        path: str,
        dest: Path,
        *,
        params: dict[str, Any] | None = None,
        if_none_match: str | None = None,
        progress: bool = False,
        label: str = "download",
    ) -> Download:
        """Stream a blob to `dest` (temp file, then rename), checked against its ETag sha256."""
        key = uuid.uuid4().hex
        extra = {"If-None-Match": f'"{if_none_match}"'} if if_none_match else None

        def attempt() -> Download:
            request = self._http.build_request(
                "GET", path, params=params, headers=self._headers(extra, key)
            )
            with self._send(request) as response:
                headers = dict(response.headers)
                etag = response.headers.get("etag", "").strip().removeprefix("W/").strip('"')
                if response.status_code == 304:
                    return Download(dest, if_none_match or etag, 0, True, headers)
                if response.is_redirect:
                    sha, size = self._from_store(response, etag, dest, progress, label)
                else:
                    sha, size = _stream_to_file(response, dest, progress=progress, label=label)
            if etag and sha != etag:
                dest.unlink(missing_ok=True)
                raise APIResponseValidationError(
                    f"GET {path}: received bytes hash to {sha[:12]}… but the server's ETag "
                    f"is {etag[:12]}… (corrupted transfer)"
                )
            return Download(dest, sha, size, False, headers)

        return self._retrying(f"GET {path}", attempt)

    def _from_store(
        self, redirect: httpx.Response, etag: str, dest: Path, progress: bool, label: str
    ) -> tuple[str, int]:
        """Follow one redirect to the blob store (a presigned URL): no Authorization is sent,
        no further redirect is followed, and the server's ETag is required to check the bytes."""
        what = f"GET {redirect.request.url.path}"
        location = redirect.headers.get("location", "")
        url = redirect.url.join(location)
        if not location or url.scheme not in ("http", "https") or not url.host:
            raise APIResponseValidationError(
                f"{what} redirected to {location!r}; only an http(s) blob store is followed"
            )
        if url.scheme == "http" and not self._allow_http:
            raise InsecureTransportError(
                f"{what} redirected to plain http://{url.host}; refused without --insecure-http"
            )
        if not etag:
            raise APIResponseValidationError(f"{what} redirected without an ETag to check")
        verify = ssl.create_default_context()  # the store's public roots, and a private CA
        if self._ca_cert is not None:
            verify.load_verify_locations(cafile=str(self._ca_cert))
        store_url = f"{url.scheme}://{url.netloc.decode()}"
        with httpx.Client(
            headers={"User-Agent": C.USER_AGENT}, timeout=self._http.timeout, verify=verify
        ) as store:
            try:
                with store.stream("GET", url) as response:
                    status = response.status_code
                    if status != 200:
                        hop = " (one redirect is followed, no more)" if status < 400 else ""
                        raise APIConnectionError(
                            f"{what}: the blob store {store_url} answered {status}{hop}",
                            url=store_url,
                            retryable=status in (403, 408, 429) or status >= 500,
                        )
                    return _stream_to_file(response, dest, progress=progress, label=label)
            except httpx.TimeoutException as exc:
                raise APITimeoutError(f"{what}: the blob store {store_url} timed out") from exc
            except httpx.TransportError as exc:
                raise _connection_error(exc, exc.request) from exc

    def _upload(
        self, path: str, source: Path, *, progress: bool = False, label: str = "upload"
    ) -> Any:
        """PUT a file's bytes (re-read from disk on every attempt, so retries send the same)."""
        key = uuid.uuid4().hex
        size = source.stat().st_size

        def attempt() -> Any:
            headers = self._headers(
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)}, key
            )
            request = self._http.build_request(
                "PUT", path, content=_file_chunks(source, size, progress, label), headers=headers
            )
            with self._send(request) as response:
                body = response.read()
            return _decode_json(body, f"PUT {path}")

        return self._retrying(f"PUT {path}", attempt)


def _decode_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise APIResponseValidationError(f"{what} answered without a JSON body") from None


def _connection_error(exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
    reason = str(exc) or type(exc).__name__
    url = str(request.url)
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return APIConnectionError(
            f"TLS certificate of {request.url.host} could not be verified ({reason}); "
            "pass --ca-cert with the CA that signed it",
            url=url,
            retryable=False,
        )
    netloc = request.url.netloc.decode()
    return APIConnectionError(f"cannot reach {request.url.scheme}://{netloc}: {reason}", url=url)


def _stream_to_file(
    response: httpx.Response, dest: Path, *, progress: bool, label: str
) -> tuple[str, int]:
    total = int(response.headers.get("content-length") or 0) or None
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.sha256()
    size = 0
    try:
        with (
            os.fdopen(fd, "wb") as f,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=label,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for chunk in response.iter_bytes(C.CHUNK_SIZE):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def _file_chunks(source: Path, size: int, progress: bool, label: str) -> Iterator[bytes]:
    with (
        source.open("rb") as f,
        tqdm(
            total=size, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False
        ) as bar,
    ):
        while chunk := f.read(C.CHUNK_SIZE):
            bar.update(len(chunk))
            yield chunk
