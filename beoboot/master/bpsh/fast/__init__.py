"""bpsh compiled (bpsh.c) and how it is compiled (compile.py): the client's start within a launcher's budget."""
