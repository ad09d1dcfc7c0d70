"""What an image needs, read from the sysroot: ELF closures, kernel modules, NIC drivers, Python."""
