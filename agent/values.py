"""Checks of config values against where they end up: one line of a generated file, one word of a kernel
command line, an http(s) URL a node fetches from, a number of seconds a timer can run.

Shared by every config loader (the build config, the stage files, beoserv's config, the agent's kernel
command line). Each check returns the value or raises ValueError with what was expected ("a ..."), which
the loader turns into its own typed error naming the file and the key. Standard library only: the agent
runs this inside the node images.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from typing import Any

# A kernel command-line word must survive every place it is written: the kernel splits on whitespace
# and groups with double quotes; pxelinux/isolinux/syslinux take the APPEND line as it is; GRUB's
# `linux` line is shell-like ($ expansion, quotes, ; & | { } < > and a backslash are special); iPXE
# expands ${...}. These characters are plain in all of them.
KERNEL_WORD = re.compile(r"[A-Za-z0-9._,:=/+@%~\[\]-]+")
KERNEL_WORD_CHARS = "letters, digits and . _ , : = / + @ % ~ [ ] -"
MAX_WORD = 512  # the x86 kernel keeps 2048 bytes of command line; the pins and fixed words take ~400
MAX_APPEND = 1024
# An http(s) base URL also goes into dnsmasq's `dhcp-boot=TAG,FILE` (a comma would start another field)
# and is joined with file names (so no query, fragment or user:password@).
URL_CHARS = re.compile(r"[A-Za-z0-9._~:/\[\]%+=-]+")
# Linux interface names: at most IFNAMSIZ - 1 bytes, no '/', ':' or whitespace; dnsmasq also takes
# a trailing '*' as a wildcard and a ',' as a list separator (not allowed: one interface).
INTERFACE = re.compile(r"[A-Za-z0-9_.*-]{1,15}")
# Dates every output can hold: FAT directory entries (floppy, EFI system partition) start at 1980, and a
# newc cpio header's mtime is 32 bits unsigned (ends 2106-02-07); ISO 9660 holds 1900..2155.
EPOCH_MIN = 315532800  # 1980-01-01 00:00:00 UTC
EPOCH_MAX = 2**32 - 1


def one_line(value: Any, what: str = "a non-empty string") -> str:
    """A non-empty string of printable characters: no newline, CR, NUL, tab or other control or
    separator character, which would end a line of a generated file (dnsmasq.conf, a boot menu, a hosts file)."""
    if not isinstance(value, str) or not value:
        raise ValueError(what)
    if not value.isprintable():
        raise ValueError(f"{what} on one line, without control characters")
    return value


def name(value: Any, what: str = "a non-empty name") -> str:
    """A one-line string without whitespace: a module, library, file or kernel version name."""
    value = one_line(value, what)
    if any(c.isspace() for c in value) or len(value) > 255:
        raise ValueError(f"{what} without spaces, at most 255 characters")
    return value


def kernel_word(value: Any, what: str = "one kernel command-line word") -> str:
    if not isinstance(value, str) or not KERNEL_WORD.fullmatch(value) or len(value) > MAX_WORD:
        raise ValueError(f"{what}: {KERNEL_WORD_CHARS} only (no spaces or quotes), at most {MAX_WORD} characters")
    return value


def kernel_words(value: Any) -> str:
    """Kernel command-line words separated by spaces (or ""): normalised to single spaces."""
    if not isinstance(value, str) or len(value) > MAX_APPEND:
        raise ValueError(f"kernel command-line words separated by spaces, at most {MAX_APPEND} characters")
    words = [w for w in value.split(" ") if w]
    for word in words:
        kernel_word(word, f"kernel command-line words separated by spaces ({word!r} is not one)")
    return " ".join(words)


def http_url(value: Any) -> str:
    """An http:// or https:// URL with a host, that can be one kernel word and one dnsmasq field."""
    what = 'an http:// or https:// URL such as "http://10.54.0.1:8080/"'
    if not isinstance(value, str) or not value or len(value) > MAX_WORD:
        raise ValueError(what)
    if not URL_CHARS.fullmatch(value):
        raise ValueError(f"{what}, of letters, digits and . _ ~ : / [ ] % + = - only")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # parses the port: ValueError when it is not a number in 0..65535
    except ValueError:
        raise ValueError(f"{what} (the host or port does not parse)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ValueError(what)
    return value


def interface(value: Any) -> str:
    if not isinstance(value, str) or not INTERFACE.fullmatch(value) or value in (".", ".."):
        raise ValueError('a network interface name such as "eth0": 1 to 15 letters, digits, _ . - (or * for dnsmasq)')
    return value


def number(value: Any, low: float, high: float, what: str = "a number of seconds", *, low_open: bool = False) -> float:
    """A finite int or float within [low, high] ((low, high] with low_open): NaN and infinity would turn a
    timer off for ever."""
    span = f"{'more than' if low_open else 'from'} {low:g} {'up to' if low_open else 'to'} {high:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what}, {span}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        raise ValueError(f"{what}, {span}") from None
    if not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        raise ValueError(f"{what}, {span}")
    return number


def whole(value: Any, low: int, high: int, what: str = "a whole number") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} from {low} to {high}")
    return value


def epoch(value: Any) -> int:
    """A timestamp every output can hold (see EPOCH_MIN, EPOCH_MAX)."""
    if isinstance(value, bool) or not isinstance(value, int) or not EPOCH_MIN <= value <= EPOCH_MAX:
        raise ValueError(
            f"a whole number of seconds since 1970 from {EPOCH_MIN} (1980-01-01, the first date FAT holds) "
            f"to {EPOCH_MAX} (2106-02-07, the last a cpio header holds)"
        )
    return value
