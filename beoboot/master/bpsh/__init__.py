"""bpsh, bpcp and bpctl, and beoserv's local socket that bpsh talks to."""
