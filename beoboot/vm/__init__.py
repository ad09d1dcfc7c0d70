"""QEMU for tests and the demo: boot a node, watch its console."""
