"""Calls into the kernel the images make: system calls, mounts, the console, module loading."""
