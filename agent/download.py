"""Download a file from the master over HTTP: retries with backoff and jitter, resume of an interrupted
transfer (Range + If-Range, RFC 9110 13.1.5), and a sha256 check before the file is used.

The file is written as NAME.part and renamed only after the hash matched, so a half or corrupt download
is never taken for a good one. HTTP is agent.httpclient's (the standard library's http.client).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.httpclient import RETRY_AFTER_MAX, Connection, HttpError, retry_after

CHUNK = 1 << 20
TIMEOUT = 20.0  # seconds for the connect, and for each wait for the master's next bytes
BUSY_JITTER = 0.25  # a busy master's Retry-After is waited up to this fraction longer, so nodes spread out
BUSY_MIN = 1.0  # seconds waited at least, whatever Retry-After says ("0" from a proxy would be a busy loop)


class DownloadError(Exception):
    """The master could not be reached or did not serve the file."""


class IntegrityError(DownloadError):
    """The file arrived, but its content is not the one pinned: it is refused."""


class MasterBusy(DownloadError):
    """The master answered 503 with Retry-After: it is sending all it can (beoserv's transfer slots, its
    descriptors). Not a failure: waited out and asked again, the bytes received so far kept."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff, capped, with +-`jitter` around each step so nodes that lost the master
    together do not come back in one wave. Shared by every retry loop of the agent."""

    first: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.25  # +- this fraction of the delay

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.cap, self.first * self.factor ** min(attempt, 64))  # a node may retry for days
        return max(0.0, base * (1 + self.jitter * (2 * rand() - 1)))


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_once(connection: Connection, url: str, dest: str, max_bytes: int | None = None) -> None:
    """One attempt; resumes DEST.part when the server still has the same version (If-Range). HttpError
    when the file is longer than `max_bytes`."""
    part = dest + ".part"
    validator_file = part + ".validator"
    headers = {"Accept-Encoding": "identity"}  # the bytes as stored: the pin is of those
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if have and os.path.exists(validator_file):
        with open(validator_file) as f:
            validator = f.read().strip()
        if validator:
            headers.update({"Range": f"bytes={have}-", "If-Range": validator})
    with connection.stream("GET", url, headers=headers) as response:
        if response.status == 416 and have:
            return  # every byte is here already
        if response.status == 206:
            mode = "ab"
        elif response.status == 200:
            mode, have = "wb", 0  # a new version, or no resume: start over
        elif response.status == 503 and (wait := retry_after(response.header("Retry-After"))) is not None:
            raise MasterBusy(f"{url}: HTTP 503, the master is busy", wait)
        elif 300 <= response.status < 400 and response.header("Location"):
            # no redirect is followed: the master serves its files itself, and pins are for its URLs
            raise DownloadError(f"{url}: HTTP {response.status}, a redirect to {response.header('Location')}")
        else:
            raise DownloadError(f"{url}: HTTP {response.status}")
        validator = response.header("ETag") or response.header("Last-Modified")
        with open(validator_file, "w") as f:
            f.write(validator)
        limit = None if max_bytes is None else max(0, max_bytes - have)
        with open(part, mode) as out:
            for chunk in response.chunks(CHUNK, limit):
                out.write(chunk)


def fetch(
    url: str,
    dest: str,
    sha256: str | None,
    *,
    log: Callable[[str], None] = print,
    attempts: int | None = None,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep,
    connection: Connection | None = None,
    max_bytes: int | None = None,
) -> str:
    """Fetch URL to DEST and check it against `sha256` (when given). Retries forever unless `attempts`
    is set: a node has nothing better to do than wait for its master. A busy master's 503 is no attempt:
    its Retry-After is waited out (MasterBusy). Returns the file's sha256. One connection to the master
    for every attempt, closed at the end unless it is the caller's."""
    own = connection is None
    http = connection or Connection(TIMEOUT)
    attempt = 0
    try:
        while True:
            try:
                fetch_once(http, url, dest, max_bytes)
                got = sha256_of(dest + ".part")
                if sha256 and got != sha256:
                    _discard(dest)
                    raise IntegrityError(f"{url}: sha256 {got} does not match the pinned {sha256}; refused")
                os.replace(dest + ".part", dest)
                _discard(dest)
                return got
            except MasterBusy as exc:
                wait = min(RETRY_AFTER_MAX, max(BUSY_MIN, exc.retry_after) * (1 + BUSY_JITTER * random.random()))
                log(f"beoboot: download {url}: the master is busy; retry in {wait:.1f}s (not counted as a failure)")
                sleep(wait)
            except (HttpError, DownloadError, OSError) as exc:
                attempt += 1
                if attempts is not None and attempt >= attempts:
                    if isinstance(exc, DownloadError):
                        raise
                    # an HttpError names the URL itself
                    raise DownloadError(str(exc) if isinstance(exc, HttpError) else f"{url}: {exc}") from exc
                wait = backoff.delay(attempt - 1)
                log(f"beoboot: download {url} failed ({_short(exc, url)}); retry {attempt} in {wait:.1f}s")
                sleep(wait)
    finally:
        if own:
            http.close()


def _discard(dest: str) -> None:
    for leftover in (dest + ".part", dest + ".part.validator"):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass


def _short(exc: BaseException, url: str) -> str:
    text = str(exc).removeprefix(f"{url}: ")  # the line names the URL already
    return text if len(text) < 160 else text[:157] + "..."
