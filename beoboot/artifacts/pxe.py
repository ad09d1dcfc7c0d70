"""The network-boot tree: one directory served both by TFTP and by HTTP (the configs of the servers that
hand it out are in beoboot.artifacts.servers).

Tree:
    pxelinux.0, ldlinux.c32, pxelinux.cfg/default   BIOS PXE: pxelinux loads the payload over TFTP
    grubnetx64.efi, grub/grub.cfg                   UEFI PXE: GRUB loads the payload over TFTP
    boot.ipxe                                       iPXE (NIC ROM, booster floppy): payload over HTTP
    ipxe.efi, undionly.kpxe                         iPXE itself, for firmware that should chain to it
    vmlinuz, initrd.img                             the payload
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

from beoboot.artifacts import (
    IPXE_EFI,
    LDLINUX_C32,
    PXELINUX_0,
    UNDIONLY_KPXE,
    BootPayload,
    copy_file,
    render,
    write_text,
)
from beoboot.artifacts.esp import GRUB_COMMON_MODULES, GRUB_NET_MODULES, write_grub_efi
from beoboot.artifacts.floppy import BOOT_SCRIPT

KERNEL = "vmlinuz"
INITRD = "initrd.img"
GRUB_NET_EFI = "grubnetx64.efi"
GRUB_DIR = "grub"


def write_pxe_tree(payload: BootPayload, outdir: Path, *, master_url: str, mtime: int) -> list[Path]:
    """Write the tree into `outdir`; returns the files written, sorted."""
    outdir = Path(outdir)
    base_url = master_url.rstrip("/")
    written = [
        copy_file(PXELINUX_0.require(), outdir / "pxelinux.0", mtime=mtime),
        copy_file(LDLINUX_C32.require(), outdir / "ldlinux.c32", mtime=mtime),
        copy_file(IPXE_EFI.require(), outdir / "ipxe.efi", mtime=mtime),
        copy_file(UNDIONLY_KPXE.require(), outdir / "undionly.kpxe", mtime=mtime),
        copy_file(Path(payload.kernel), outdir / KERNEL, mtime=mtime),
        copy_file(Path(payload.initrd), outdir / INITRD, mtime=mtime),
    ]
    texts = {
        "pxelinux.cfg/default": render("pxelinux-default.j2", kernel=KERNEL, initrd=INITRD, append=payload.append),
        BOOT_SCRIPT: render("boot.ipxe.j2", base_url=base_url, kernel=KERNEL, initrd=INITRD, append=payload.append),
        f"{GRUB_DIR}/grub.cfg": render("grub-net.cfg.j2", kernel=KERNEL, initrd=INITRD, append=payload.append),
    }
    written += [write_text(outdir / name, text, mtime=mtime) for name, text in texts.items()]
    with TemporaryDirectory(prefix="beoboot-pxe-") as scratch:
        grub = write_grub_efi(
            Path(scratch) / GRUB_NET_EFI,
            embedded_config=render("grub-net-early.cfg.j2", grub_dir=GRUB_DIR),
            prefix=f"(tftp)/{GRUB_DIR}",
            modules=(*GRUB_COMMON_MODULES, *GRUB_NET_MODULES),
        )
        written.append(copy_file(grub, outdir / GRUB_NET_EFI, mtime=mtime))
    return sorted(written)
