"""Sending a file that the handler has already opened, with Range and If-Range (RFC 9110 14.2, 13.1.5).

aiohttp's FileResponse opens its file only once the handler has returned, and answers any OSError of that
open() with 404: a master out of descriptors would tell nodes their boot image is not there. Here the
handler opens the file itself, so a failure to open is its own to answer (503 for EMFILE), and the
response sends from that descriptor with sendfile(2), whatever a later build puts at the path.

Range: one range (aiohttp parses the header: request.http_range), as a resuming download sends; If-Range
with the strong ETag, or the Last-Modified date exactly. Nodes send no other conditional requests.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from typing import Any, BinaryIO

from aiohttp import web


def strong_etag(st: os.stat_result) -> str:
    """The file's validator, as FileResponse and nginx make it: changes with its mtime or size."""
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def last_modified(st: os.stat_result) -> int:
    """The Last-Modified date sent, in whole seconds: rounded up, as aiohttp does, so a file changed within
    the second sent is never taken for older than it is."""
    return math.ceil(st.st_mtime)


def open_to_send(path: str | os.PathLike[str]) -> tuple[BinaryIO, os.stat_result]:
    """The file at `path`, open, and its stat; OSError as open() raises it (the caller tells a file that is
    gone from a resource that ran out)."""
    file = open(path, "rb")  # closed by FileSend once sent, or here
    try:
        return file, os.fstat(file.fileno())
    except BaseException:
        file.close()
        raise


def plan(size: int, wanted: slice | None) -> tuple[int, int, int]:
    """(status, first byte, byte count) for a file of `size` bytes and the range aiohttp parsed (None: no
    Range, or one that does not apply): 200 for the whole file, 206 for a part, 416 for a range that starts
    past the end. `wanted` is request.http_range's slice: bytes=A-B is slice(A, B + 1), bytes=A- is
    slice(A, None), bytes=-N is slice(-N, None)."""
    if wanted is None or (wanted.start is None and wanted.stop is None):
        return 200, 0, size
    start, stop = wanted.start or 0, wanted.stop
    if start < 0:  # the last -start bytes, or the whole file if it is shorter
        start = max(0, size + start)
        stop = size
    if start >= size:
        return 416, 0, 0
    end = size if stop is None else min(stop, size)
    return 206, start, end - start


def range_applies(request: web.BaseRequest, st: os.stat_result) -> bool:
    """If-Range (RFC 9110 13.1.5): the Range is served only if the validator the client has is still the
    file's; otherwise the client's part is of another version and the whole file is sent."""
    sent = request.headers.get("If-Range")
    if sent is None:
        return True
    if sent.startswith(('"', "W/")):
        return sent == strong_etag(st)  # a weak tag never matches: If-Range compares strongly
    date = request.if_range  # None when it is no HTTP date
    return date is not None and date.timestamp() == last_modified(st)


class FileSend(web.StreamResponse):
    """The response for an open regular file. `done(bytes sent)` is called, and the file closed, once it
    is sent or the client went away."""

    def __init__(
        self,
        file: BinaryIO,
        st: os.stat_result,
        done: Callable[[int], None] = lambda sent: None,
        content_type: str = "application/octet-stream",
    ) -> None:
        super().__init__()
        self._file = file
        self._st = st
        self._done: Callable[[int], None] | None = done
        self.content_type = content_type

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:
            return await super().prepare(request)
        sent = 0
        try:
            wanted = None
            if range_applies(request, self._st):
                try:
                    wanted = request.http_range
                except ValueError:  # not a range aiohttp can read: unsatisfiable, as FileResponse says
                    return await self._unsatisfiable(request)
            status, start, count = plan(self._st.st_size, wanted)
            if status == 416:
                return await self._unsatisfiable(request)
            self.set_status(status)
            self.etag = strong_etag(self._st).strip('"')
            self.last_modified = last_modified(self._st)
            self.content_length = count
            self.headers["Accept-Ranges"] = "bytes"
            if status == 206:
                self.headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{self._st.st_size}"
            writer = await super().prepare(request)
            if count and request.method != "HEAD":
                if request.transport is None:
                    raise ConnectionResetError("the client went away")
                sent = await asyncio.get_running_loop().sendfile(request.transport, self._file, start, count)
            await super().write_eof()
            return writer
        finally:
            self.close_file(sent)

    async def _unsatisfiable(self, request: web.BaseRequest) -> Any:
        self.set_status(416)
        self.headers["Content-Range"] = f"bytes */{self._st.st_size}"
        self.content_length = 0
        return await super().prepare(request)

    def close_file(self, sent: int = 0) -> None:
        """Close the file and report; once (also for a response never sent: the handler's caller failed)."""
        self._file.close()
        if self._done is not None:
            done, self._done = self._done, None
            done(sent)
