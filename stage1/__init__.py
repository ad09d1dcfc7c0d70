"""Stage 1, the booster: find stage 2 on the network and kexec into it."""
