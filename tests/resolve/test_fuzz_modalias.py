"""The modalias matcher against glibc's own fnmatch(3), which libkmod calls: any pattern made of the
characters modules.alias uses (`*`, `?`, `[...]`, `!`, `^`, `-`, `\\`) gives the same answer for any key."""

from __future__ import annotations

import ctypes
import ctypes.util
import locale

from hypothesis import example, given, settings
from hypothesis import strategies as st

from beoboot.resolve.modalias import matches

_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.fnmatch.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int)


def glibc_fnmatch(pattern: str, key: str) -> bool:
    return _libc.fnmatch(pattern.encode(), key.encode(), 0) == 0


# a few ordinary characters (as in modalias keys) and every one that means something in a pattern
PATTERN_CHARS = "aAb0z9v*?[]!^-\\/"  # no ".", ":", "=": "[.", "[:", "[=" open POSIX classes
KEY_CHARS = "aAb0z9v[]!^-\\/.*?"

patterns = st.text(PATTERN_CHARS, max_size=12)
keys = st.text(KEY_CHARS, max_size=10)


def test_glibc_compares_in_byte_order():
    """Ranges compare in the C locale's byte order only if LC_COLLATE is C: the oracle must be."""
    assert locale.setlocale(locale.LC_COLLATE) in ("C", "POSIX")


@settings(max_examples=3000, deadline=None)
@given(patterns, keys)
@example("[z-a]", "m")
@example("[^a]", "^")
@example("[!]]", "]")
@example("[]-a]", "^")
@example("a\\", "a\\")
@example("[a-", "[a-")
@example("[\\]]", "]")
@example("*[", "x[")
@example("[[-", "[[-")
@example("a[[-\\", "a[")
@example("[x-[b", "[b")
def test_same_answer_as_glibc(pattern, key):
    assert matches(pattern, key) == glibc_fnmatch(pattern, key), (pattern, key)


@settings(max_examples=500, deadline=None)
@given(st.text("0123456789ABCDEF", min_size=4, max_size=4), st.text("0123456789ABCDEF", min_size=4, max_size=4))
def test_a_pci_modalias_against_real_pattern_shapes(vendor, device):
    key = f"pci:v0000{vendor}d0000{device}sv00001AF4sd00001100bc01sc08i02"
    for pattern in (
        "pci:v*d*sv*sd*bc01sc08i02*",
        f"pci:v0000{vendor}d0000{device}sv*sd*bc*sc*i*",
        "pci:v0000[0-9A-F]???d*sv*sd*bc0[0-9]sc*i*",
        f"pci:v0000{vendor}d0000[!{device[0]}]*",
    ):
        assert matches(pattern, key) == glibc_fnmatch(pattern, key), pattern


def test_nvme_class_alias_matches_qemus_nvme_controller():
    assert matches("pci:v*d*sv*sd*bc01sc08i02*", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02")
    assert not matches("pci:v*d*sv*sd*bc01sc08i02*", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc06i01")
