"""KernelModules against a small fake module tree (tests/data/kmodtree.py), and its parsers table-tested."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import pytest

from beoboot.errors import ModuleError
from beoboot.resolve.kmod import (
    AliasIndex,
    DepEntry,
    KernelModules,
    decompress_module,
    module_name_from_path,
    normalise_alias,
    normalise_module_name,
    parse_modules_alias,
    parse_modules_dep,
    parse_softdeps,
    version_key,
)
from beoboot.resolve.sysroot import Sysroot

_spec = importlib.util.spec_from_file_location("kmodtree", Path(__file__).parents[1] / "data" / "kmodtree.py")
kmodtree = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kmodtree)

needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd program not installed")


@pytest.fixture
def kmods(tmp_path: Path) -> KernelModules:
    if shutil.which("zstd") is None:
        pytest.skip("zstd program not installed")
    return KernelModules(Sysroot(kmodtree.make_tree(tmp_path)), kmodtree.VERSION)


@pytest.mark.parametrize(
    "given, expected",
    [("e1000e", "e1000e"), ("uhci-hcd", "uhci_hcd"), ("snd-hda-intel", "snd_hda_intel"), ("a_b-c", "a_b_c")],
)
def test_normalise_module_name(given: str, expected: str) -> None:
    assert normalise_module_name(given) == expected


@pytest.mark.parametrize(
    "given, expected",
    [
        ("kernel/fs/ext4/ext4.ko", "ext4"),
        ("kernel/drivers/usb/host/uhci-hcd.ko.xz", "uhci_hcd"),
        ("/lib/modules/v/extra/foo-bar.ko.zst", "foo_bar"),
        ("kernel/x/gz-mod.ko.gz", "gz_mod"),
    ],
)
def test_module_name_from_path(given: str, expected: str) -> None:
    assert module_name_from_path(given) == expected


@pytest.mark.parametrize(
    "given, expected",
    [("crypto-crc32c", "crypto_crc32c"), ("pci:v*d*", "pci:v*d*"), ("a-[x-z]-b", "a_[x-z]_b")],
)
def test_normalise_alias(given: str, expected: str) -> None:
    assert normalise_alias(given) == expected


def test_parse_modules_dep_reverses_into_load_order() -> None:
    table = parse_modules_dep(
        "kernel/a.ko: kernel/b.ko kernel/c-d.ko.xz\nkernel/b.ko: kernel/c-d.ko.xz\n\nkernel/c-d.ko.xz:\n"
    )
    assert table == {
        "a": DepEntry("kernel/a.ko", ("c_d", "b")),
        "b": DepEntry("kernel/b.ko", ("c_d",)),
        "c_d": DepEntry("kernel/c-d.ko.xz", ()),
    }


def test_parse_modules_dep_rejects_garbage() -> None:
    with pytest.raises(ModuleError, match="cannot parse line 'garbage'"):
        parse_modules_dep("garbage\n")


def test_parse_modules_alias_keeps_order_and_skips_comments() -> None:
    text = "# comment\nalias pci:v1* foo-bar\nalias b baz\noptions x y=1\n"
    assert parse_modules_alias(text) == [("pci:v1*", "foo_bar"), ("b", "baz")]


@pytest.mark.parametrize(
    "line, pre, post",
    [
        ("softdep ext4 pre: crypto-crc32c", ("crypto-crc32c",), ()),
        ("softdep a pre: b c post: d", ("b", "c"), ("d",)),
        ("softdep a post: d pre: b", ("b",), ("d",)),
        ("softdep cifs gcm", (), ()),  # no pre:/post: -> ignored, as libkmod does
    ],
)
def test_parse_softdeps(line: str, pre: tuple[str, ...], post: tuple[str, ...]) -> None:
    (row,) = parse_softdeps(line, "test")
    assert (row.pre, row.post) == (pre, post)


def test_alias_index_is_case_sensitive_and_ordered() -> None:
    index = AliasIndex([("pci:v0000ABCDd*", "first"), ("pci:v*", "any"), ("pci:v0000abcdd*", "lower"), ("x", "x")])
    assert index.lookup("pci:v0000ABCDd00000001") == ["first", "any"]
    assert index.lookup("usb:v1") == []


def test_version_key_orders_naturally() -> None:
    assert sorted(["6.1.0-10-amd64", "6.1.0-9-amd64", "5.10.0-1"], key=version_key) == [
        "5.10.0-1",
        "6.1.0-9-amd64",
        "6.1.0-10-amd64",
    ]


def names(needs: list) -> list[str]:
    return [n.name for n in needs]


def test_resolve_puts_dependencies_first(kmods: KernelModules) -> None:
    needs = kmods.resolve(["e1000e"])
    assert names(needs) == ["pps_core", "ptp", "e1000e"]
    assert needs[0].path == f"/lib/modules/{kmodtree.VERSION}/kernel/drivers/pps/pps_core.ko"
    assert (needs[0].reason, needs[0].cause) == ("dependency of e1000e", "e1000e")
    assert (needs[-1].reason, needs[-1].cause) == ("requested", None)


def test_resolve_alias_and_dedup(kmods: KernelModules) -> None:
    needs = kmods.resolve(["pci:v00008086d000010D3sv*sd*bc*sc*i*", "e1000e", "ptp"])
    assert names(needs) == ["pps_core", "ptp", "e1000e"]
    assert needs[-1].reason == "requested as pci:v00008086d000010D3sv*sd*bc*sc*i*"


def test_resolve_softdeps_and_warns_about_missing_optional(kmods: KernelModules, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="beoboot.resolve.kmod"):
        needs = kmods.resolve(["fs-ext4"])
    assert names(needs) == ["crc32c_generic", "jbd2", "ext4"]
    assert needs[0].reason == "pre-softdep of jbd2"
    assert "missing-optional" in caplog.text and "softdep of ext4" in caplog.text


def test_resolve_reads_modprobe_d_softdeps(kmods: KernelModules) -> None:
    assert names(kmods.resolve(["uhci-hcd"])) == ["usbcore", "ehci_hcd", "uhci_hcd"]
    assert names(kmods.resolve(["cifs"])) == ["cifs"]


def test_resolve_compressed_modules(kmods: KernelModules) -> None:
    needs = kmods.resolve(["virtio:d00000001v00001AF4"])
    assert names(needs) == ["virtio", "failover", "net_failover", "virtio_net"]
    assert needs[2].path.endswith("net_failover.ko.zst") and needs[3].path.endswith("virtio_net.ko.xz")


def test_resolve_skips_builtin(kmods: KernelModules) -> None:
    assert kmods.resolve(["unix", "net-pf-1", "pci:v0000ABCDd00000001sv*sd*bc*sc*i*"]) == []
    assert kmods.is_builtin("unix")


def test_unknown_name_suggests_close_one(kmods: KernelModules) -> None:
    with pytest.raises(ModuleError, match="'e1000ee'") as err:
        kmods.resolve(["e1000ee"])
    assert "e1000e" in (err.value.hint or "") and "beoboot-build nics" in (err.value.hint or "")


@pytest.mark.parametrize(
    "name, suffix, stored_name",
    [("e1000e", ".ko", "e1000e"), ("virtio_net", ".ko.xz", "virtio_net"), ("net-failover", ".ko.zst", "net_failover")],
)
def test_modinfo_reads_plain_xz_and_zstd_modules(
    kmods: KernelModules, name: str, suffix: str, stored_name: str
) -> None:
    assert kmods.module_path(name).endswith(suffix)
    info = kmods.modinfo(name)
    assert info["name"] == [stored_name]
    assert info["license"] == ["GPL"]


def test_modinfo_of_builtin_and_alias(kmods: KernelModules) -> None:
    assert kmods.modinfo("unix")["alias"] == ["net-pf-1"]
    assert kmods.modinfo("virtio:d00000001v1")["alias"] == ["virtio:d00000001v*"]


def test_decompress_leaves_plain_elf_alone() -> None:
    assert decompress_module(b"\x7fELFxyz", "x.ko") == b"\x7fELFxyz"


def test_latest_needs_kernel_image(tmp_path: Path) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd program not installed")
    kmodtree.make_tree(tmp_path, "1.0.9")
    kmodtree.make_tree(tmp_path, "1.0.10")
    kmodtree.make_tree(tmp_path, "1.0.11", with_kernel=False)
    latest = KernelModules.latest(Sysroot(tmp_path))
    assert (latest.version, latest.kernel_image) == ("1.0.10", "/boot/vmlinuz-1.0.10")


def test_missing_kernel_is_module_error(tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match="no kernel in sysroot"):
        KernelModules.latest(Sysroot(tmp_path))
    with pytest.raises(ModuleError, match="no modules.dep for kernel '9.9'"):
        KernelModules(Sysroot(tmp_path), "9.9")


@pytest.mark.parametrize("index", ["modules.alias", "modules.builtin"])
def test_a_fifo_for_a_module_index_is_an_error_not_a_wait(tmp_path: Path, index: str) -> None:
    """`beoboot-build modules` opened it and waited for a writer for ever; now it says what it found."""
    import os
    import subprocess
    import sys

    kmodtree.make_tree(tmp_path)
    fifo = tmp_path / "lib/modules" / kmodtree.VERSION / index
    fifo.unlink()
    os.mkfifo(fifo)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "beoboot",
            "modules",
            "--sysroot",
            str(tmp_path),
            "--kernel",
            kmodtree.VERSION,
            "e1000e",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot read /lib/modules/{kmodtree.VERSION}/{index} in sysroot" in result.stderr
    assert "not a regular file (a FIFO)" in result.stderr
