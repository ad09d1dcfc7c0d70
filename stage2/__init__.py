"""Stage 2, the PXE ramdisk: fetch stage 3, unpack it, switch_root into it."""
