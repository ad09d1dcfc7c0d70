"""Compressors: round trips, determinism, kernel-specific formats, and a real-kernel boot of each.

The boot tests build a one-file initramfs whose /init is a freestanding static program (raw syscalls,
no libc), compress it with each compressor and boot /boot/vmlinuz-* under QEMU (TCG); the program prints
a marker on the console and powers off.
"""

from __future__ import annotations

import glob
import lzma
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from beoboot import config
from beoboot.errors import ConfigError, ImageError, ToolError
from beoboot.image import compress as compress_module
from beoboot.image.archive import split_archives, write_image
from beoboot.image.compress import Compression, compress, decompress, detect
from beoboot.image.filelist import FileList, Reason

# Starts like a newc cpio so that "none" is recognised by magic too.
SAMPLE = b"070701" + b"".join(b"line %d of a cpio-ish sample, somewhat repetitive\n" % i for i in range(5000))
ALL = list(Compression)


@pytest.mark.parametrize("kind", ALL)
def test_round_trip(kind: Compression) -> None:
    packed = compress(SAMPLE, kind)
    assert detect(packed) == kind
    assert decompress(packed) == SAMPLE


@pytest.mark.parametrize("kind", ALL)
def test_identical_input_gives_identical_output(kind: Compression, monkeypatch: pytest.MonkeyPatch) -> None:
    first = compress(SAMPLE, kind)
    # Variables that the zstd/lz4/xz CLIs read for defaults must not leak into the output.
    for name, value in {
        "ZSTD_CLEVEL": "1",
        "ZSTD_NBTHREADS": "2",
        "LZ4_CLEVEL": "1",
        "XZ_OPT": "-0",
        "TZ": "Asia/Tokyo",
    }.items():
        monkeypatch.setenv(name, value)
    assert compress(SAMPLE, kind) == first


def test_gzip_header_has_no_name_and_mtime_zero() -> None:
    packed = compress(SAMPLE, Compression.GZIP)
    flags, mtime = packed[3], int.from_bytes(packed[4:8], "little")
    assert flags & 0x08 == 0  # FNAME
    assert mtime == 0


def test_xz_uses_crc32_check() -> None:
    # Stream flags (bytes 6-7 of the xz header): second byte is the check type, 0x01 = CRC32.
    packed = compress(SAMPLE, Compression.XZ)
    assert packed[6:8] == b"\x00\x01"
    assert lzma.decompress(packed) == SAMPLE


def test_lz4_uses_legacy_frame() -> None:
    assert compress(SAMPLE, Compression.LZ4)[:4] == b"\x02\x21\x4c\x18"


def test_zstd_window_fits_the_kernel_decoder() -> None:
    # Frame header descriptor (byte 4): bit 5 = single segment (no window byte); else byte 5 holds the
    # window log as exponent + 10 in its high 5 bits.
    packed = compress(SAMPLE * 20, Compression.ZSTD)
    descriptor = packed[4]
    if not descriptor & 0x20:
        window_log = 10 + (packed[5] >> 3)
        assert window_log <= 23


@pytest.mark.parametrize(
    ("kind", "level"),
    [
        (Compression.GZIP, 0),
        (Compression.GZIP, 10),
        (Compression.XZ, 10),
        (Compression.ZSTD, 20),
        (Compression.LZ4, 13),
    ],
)
def test_out_of_range_level_is_a_config_error(kind: Compression, level: int) -> None:
    with pytest.raises(ConfigError, match=f"level {level} is out of range for {kind}"):
        compress(SAMPLE, kind, level)


@pytest.mark.parametrize(
    ("head", "message"),
    [(b"\x04\x22\x4d\x18rest", "modern LZ4 frame"), (b"PK\x03\x04zip", "504b03047a69")],
)
def test_unknown_magic_is_named(head: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decompress(head)


def test_missing_tool_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compress_module.shutil, "which", lambda name: None)
    with pytest.raises(ToolError) as error:
        compress(SAMPLE, Compression.LZ4)
    assert error.value.hint == "apt-get install lz4"


# ---- booting the real kernel ------------------------------------------------------------------------

MARKER = "BEOBOOT-COMPRESS-OK"

# A freestanding /init: open /dev/console, write the marker, power off. No libc, so it needs only gcc.
INIT_C = r"""
static long sys(long n, long a, long b, long c, long d) {
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return ret;
}
static const char msg[] = "\n%s\n";
void _start(void) {
    long fd = sys(2 /* open */, (long)"/dev/console", 1 /* O_WRONLY */, 0, 0);
    if (fd < 0) fd = 1;
    sys(1 /* write */, fd, (long)msg, sizeof(msg) - 1, 0);
    sys(162 /* sync */, 0, 0, 0, 0);
    sys(169 /* reboot */, 0xfee1dead, 672274793, 0x4321fedc /* LINUX_REBOOT_CMD_POWER_OFF */, 0);
    for (;;) sys(60 /* exit */, 0, 0, 0, 0);
}
"""


def kernel_image() -> str | None:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    return kernels[-1] if kernels else None


def boot_initramfs(kernel: str, initrd: Path, timeout: float = 180) -> str:
    """Boot `kernel` with `initrd` under QEMU (TCG only: /dev/kvm is unusable here) and return the console.

    The guest is expected to power off; a kernel panic reboots (panic=-1), which -no-reboot turns into
    an exit, so a failed boot ends quickly instead of waiting for the timeout.
    """
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "accel=tcg",
        "-m",
        "512",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-kernel",
        kernel,
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyS0 panic=-1 quiet",
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as e:
        output = e.stdout or b""
        return output.decode(errors="replace") + "\n[timed out]"
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def build_tiny_init(work: Path) -> Path:
    (work / "init.c").write_text(INIT_C.replace("%s", MARKER))
    subprocess.run(
        [
            "gcc",
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-O2",
            "-o",
            str(work / "init"),
            str(work / "init.c"),
        ],
        check=True,
    )
    return work / "init"


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the test /init (apt-get install gcc)")
    return build_tiny_init(tmp_path_factory.mktemp("init"))


KERNEL_DECODERS = {
    Compression.GZIP: "CONFIG_RD_GZIP",
    Compression.XZ: "CONFIG_RD_XZ",
    Compression.ZSTD: "CONFIG_RD_ZSTD",
    Compression.LZ4: "CONFIG_RD_LZ4",
}


def test_default_stage_compressors_are_built_into_the_kernel() -> None:
    """The kernel unpacks stages 1 and 2 itself, with the decoders its config built in."""
    configs = sorted(glob.glob("/boot/config-*"))
    if not configs:
        pytest.skip("needs a kernel config in /boot")
    text = Path(configs[-1]).read_text()
    for stage in ("stage1", "stage2"):
        kind = config.load(environ={}).image(stage).compression
        assert kind == Compression.NONE or f"\n{KERNEL_DECODERS[kind]}=y\n" in text, (stage, kind, configs[-1])


@pytest.mark.integration
@pytest.mark.parametrize("kind", ALL)
def test_kernel_boots_image(kind: Compression, tiny_init: Path, tmp_path: Path) -> None:
    kernel = kernel_image()
    if kernel is None or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs a kernel in /boot and qemu-system-x86_64")
    files = FileList()
    reason = Reason("boot test")
    files.add_file("/init", tiny_init, reason, mode=0o755)
    files.add_chardev("/dev/console", 5, 1, reason)
    files.add_chardev("/dev/null", 1, 3, reason, mode=0o666)
    image = tmp_path / f"initrd.{kind}"
    # /init in a second archive, compressed on its own after the first: the kernel unpacks every part
    write_image(files, image, kind, mtime=0, shared=lambda entry: entry.path == "/init")
    assert len(split_archives(decompress(image.read_bytes()))) == 2
    start = time.monotonic()
    console = boot_initramfs(kernel, image)
    assert MARKER in console, f"{kind}: no marker after {time.monotonic() - start:.0f}s; console:\n{console[-3000:]}"
