"""Local partitions by their file system label (a [[mounts]] source "LABEL=scratch"): read from the
superblocks themselves, as the node has no udev to make /dev/disk/by-label and no blkid."""

from __future__ import annotations

import os

# ext2/3/4: the superblock at 1024; s_magic 0xEF53 at +56 (little-endian), s_volume_name[16] at +120
EXT_SUPERBLOCK, EXT_MAGIC, EXT_LABEL = 1024, b"\x53\xef", (120, 16)
# XFS: the superblock at 0; "XFSB", sb_fname[12] at +108
XFS_MAGIC, XFS_LABEL = b"XFSB", (108, 12)


def label_of(head: bytes) -> str | None:
    """The label in the first 2 KiB of a partition, or None (no ext or XFS superblock, or no label)."""
    ext = head[EXT_SUPERBLOCK : EXT_SUPERBLOCK + 256]
    if ext[56:58] == EXT_MAGIC:
        start, size = EXT_LABEL
        raw = ext[start : start + size]
    elif head[:4] == XFS_MAGIC:
        start, size = XFS_LABEL
        raw = head[start : start + size]
    else:
        return None
    label = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return label or None


def find_label(label: str, sys_block: str = "/sys/class/block", dev: str = "/dev") -> str | None:
    """The /dev path of the block device whose file system has `label`, or None."""
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return None
    for name in names:
        path = os.path.join(dev, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            head = os.pread(fd, 2048, 0)
        except OSError:
            continue
        finally:
            os.close(fd)
        if label_of(head) == label:
            return path
    return None
