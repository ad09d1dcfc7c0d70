"""A hybrid boot ISO: BIOS (isolinux, El Torito no-emulation), UEFI (El Torito EFI image: a FAT ESP with
GRUB as EFI/BOOT/BOOTX64.EFI) and an isohybrid MBR + GPT, so the same file boots from a CD drive or
written with `dd` to a USB stick.
"""

# Layout (ISO 9660 name / Rock Ridge name):
#     /ISOLINUX/ISOLINUX.BIN, LDLINUX.C32, ISOLINUX.CFG   BIOS boot loader and its config
#     /BOOT/VMLINUZ, /BOOT/INITRD.IMG                     the payload, read by isolinux and by GRUB
#     /BOOT/GRUB/GRUB.CFG                                 GRUB's menu (UEFI)
#     /EFI/BOOT/EFIBOOT.IMG                               the El Torito EFI image (FAT ESP)
#     /BEOBOOT/<id>.ID                                    marker GRUB searches for to find this medium
#     /BEOBOOT/GPTROOM.PAD                                zeros, only when the backup GPT needs room (below)
#
# The isohybrid part ends the image with a backup GPT (33 sectors). pycdlib pads the image to a whole 1 MiB
# cylinder and writes that GPT over its last 33 sectors without checking that the ISO's own data ends before
# them: an ISO whose data ends in the last 16.5 KiB of a MiB (or on the MiB) gets the tail of its last file
# overwritten. That file was ldlinux.c32, and the BIOS boot hung with no output. The image is written, the
# room checked, and written again with a padding file when there was too little.

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory

import pycdlib

from beoboot.artifacts import ISOLINUX_BIN, LDLINUX_C32, BootPayload, atomic_output, render
from beoboot.artifacts.esp import GRUB_CD_MODULES, GRUB_COMMON_MODULES, write_fat_image, write_grub_efi

VOLUME_ID = "BEOBOOT"
BACKUP_GPT_BYTES = 33 * 512  # the backup GPT header and its 128 partition entries, at the very end
GPT_ROOM_PAD = 64 * 1024  # moves the data's end well past the cylinder boundary it came too close to
EFI_IMAGE_PATH = "/EFI/BOOT/EFIBOOT.IMG;1"
ISOLINUX_BIN_PATH = "/ISOLINUX/ISOLINUX.BIN;1"
# El Torito platform id of UEFI (El Torito spec as amended by UEFI 2.x, section 13.3.2.1).
PLATFORM_EFI = 0xEF


def medium_id(payload: BootPayload, mtime: int) -> str:
    """Names the marker file: GRUB must find *this* medium, not another beoboot disk in the same node."""
    digest = hashlib.sha256(f"{payload.append}\0{mtime}\0".encode())
    for path in (payload.kernel, payload.initrd):
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:8].upper()


def write_iso(payload: BootPayload, out: Path, *, mtime: int, volume_id: str = VOLUME_ID) -> None:
    ident = medium_id(payload, mtime)
    marker = f"/beoboot/{ident.lower()}.id"
    with TemporaryDirectory(prefix="beoboot-iso-") as scratch_dir:
        scratch = Path(scratch_dir)
        early = render("grub-iso-early.cfg.j2", marker=marker)
        grub_efi = write_grub_efi(
            scratch / "bootx64.efi",
            embedded_config=early,
            prefix="/boot/grub",
            modules=(*GRUB_COMMON_MODULES, *GRUB_CD_MODULES),
        )
        efi_image = write_fat_image(
            {"EFI/BOOT/BOOTX64.EFI": grub_efi}, scratch / "efiboot.img", mtime=mtime, label="BEOBOOT_ESP"
        )
        texts = {
            "isolinux.cfg": render("isolinux.cfg.j2", append=payload.append),
            "grub.cfg": render("grub.cfg.j2", append=payload.append, kernel="/boot/vmlinuz", initrd="/boot/initrd.img"),
            "marker": f"beoboot medium {ident}\n",
        }
        for name, text in texts.items():
            (scratch / name).write_text(text)
        files = [  # (ISO 9660 path, Rock Ridge name, source), directories before their files
            (ISOLINUX_BIN_PATH, "isolinux.bin", ISOLINUX_BIN.require()),
            ("/ISOLINUX/LDLINUX.C32;1", "ldlinux.c32", LDLINUX_C32.require()),
            ("/ISOLINUX/ISOLINUX.CFG;1", "isolinux.cfg", scratch / "isolinux.cfg"),
            ("/BOOT/VMLINUZ.;1", "vmlinuz", Path(payload.kernel)),
            ("/BOOT/INITRD.IMG;1", "initrd.img", Path(payload.initrd)),
            ("/BOOT/GRUB/GRUB.CFG;1", "grub.cfg", scratch / "grub.cfg"),
            (EFI_IMAGE_PATH, "efiboot.img", efi_image),
            (f"/BEOBOOT/{ident}.ID;1", f"{ident.lower()}.id", scratch / "marker"),
        ]
        directories = [
            ("/ISOLINUX", "isolinux"),
            ("/BOOT", "boot"),
            ("/BOOT/GRUB", "grub"),
            ("/EFI", "EFI"),
            ("/EFI/BOOT", "BOOT"),
            ("/BEOBOOT", "beoboot"),
        ]
        with atomic_output(out) as tmp:
            data_end = _write_hybrid(tmp, files, directories, ident, volume_id, mtime)
            if tmp.stat().st_size - data_end < BACKUP_GPT_BYTES:
                (scratch / "gpt-room.pad").write_bytes(bytes(GPT_ROOM_PAD))
                files.append(("/BEOBOOT/GPTROOM.PAD;1", "gpt-room.pad", scratch / "gpt-room.pad"))
                data_end = _write_hybrid(tmp, files, directories, ident, volume_id, mtime)
            if tmp.stat().st_size - data_end < BACKUP_GPT_BYTES:  # pycdlib changed how it pads: stop, loudly
                raise RuntimeError(f"{out}: the isohybrid backup GPT would overwrite the ISO's last file")


def _write_hybrid(
    tmp: Path,
    files: list[tuple[str, str, Path]],
    directories: list[tuple[str, str]],
    ident: str,
    volume_id: str,
    mtime: int,
) -> int:
    """Write the image to `tmp`; the byte offset where the ISO's own data ends (the rest is padding and GPT)."""
    with _pinned_clock(mtime), contextlib.ExitStack() as files_open:
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=1, vol_ident=volume_id, sys_ident="LINUX", rock_ridge="1.09")
        for iso_path, rr_name in directories:
            iso.add_directory(iso_path, rr_name=rr_name)
        for iso_path, rr_name, source in files:
            handle = files_open.enter_context(open(source, "rb"))
            # an explicit mode: otherwise Rock Ridge records the scratch file's mode, i.e. the umask
            iso.add_fp(handle, source.stat().st_size, iso_path, rr_name=rr_name, file_mode=0o100444)
        # isolinux.bin patches the boot info table (El Torito "-boot-info-table") to find itself.
        iso.add_eltorito(
            ISOLINUX_BIN_PATH,
            bootcatfile="/ISOLINUX/BOOT.CAT;1",
            rr_bootcatname="boot.cat",
            boot_load_size=4,
            boot_info_table=True,
        )
        iso.add_eltorito(
            EFI_IMAGE_PATH,
            bootcatfile="/ISOLINUX/BOOT.CAT;1",
            rr_bootcatname="boot.cat",
            efi=True,
            platform_id=PLATFORM_EFI,
        )
        iso.add_isohybrid(efi=True, mbr_id=int(ident, 16))
        iso.write(str(tmp))
        data_end = iso.pvd.space_size * iso.logical_block_size
        iso.close()
    return data_end


# pycdlib stamps every date with time.time() in local time and makes GPT GUIDs with uuid4(); it has no
# parameter for either. While an ISO is written, its modules see a clock stopped at `mtime` (in UTC, so
# the build machine's time zone does not leak into the bytes) and GUIDs derived from `mtime`.
_PYCDLIB_CLOCK_USERS = ("pycdlib.dates", "pycdlib.headervd", "pycdlib.pycdlib", "pycdlib.utils")
_patch_lock = threading.Lock()


@contextlib.contextmanager
def _pinned_clock(mtime: int) -> Iterator[None]:
    import importlib

    clock = types.SimpleNamespace(
        time=lambda: float(mtime),
        localtime=time.gmtime,
        gmtime=time.gmtime,
        strftime=time.strftime,
        mktime=time.mktime,
        struct_time=time.struct_time,
    )
    counter = iter(range(1 << 30))

    def derived_uuid4() -> uuid.UUID:
        seed = hashlib.sha256(f"beoboot-iso-guid\0{mtime}\0{next(counter)}".encode()).digest()
        return uuid.UUID(bytes=seed[:16], version=4)

    guids = types.SimpleNamespace(uuid4=derived_uuid4, UUID=uuid.UUID)
    patched = [(importlib.import_module(name), "time", clock) for name in _PYCDLIB_CLOCK_USERS]
    patched.append((importlib.import_module("pycdlib.isohybrid"), "uuid", guids))
    with _patch_lock:
        saved = [(module, attr, getattr(module, attr)) for module, attr, _ in patched]
        try:
            for module, attr, value in patched:
                setattr(module, attr, value)
            yield
        finally:
            for module, attr, value in saved:
                setattr(module, attr, value)
