#!/usr/bin/python3 -IS
"""The Python `bpsh` executable: load the client from its compiled .pyc and run it. The compiled bpsh
(fast/bpsh.c, which build.py and pip install as `bpsh`) runs this for the command lines it leaves to it.

A script is compiled from source on every run, which for the whole client costs as much as the job it
starts; a module imported from beside it is compiled once. Under -I the script's directory is not on
sys.path, so find it through the links (without os.path: importing it costs a millisecond more).
"""

import posix
import sys

here = __file__
while True:
    try:
        target = posix.readlink(here)
    except OSError:
        break
    here = target if target.startswith("/") else here.rpartition("/")[0] + "/" + target
sys.path.insert(0, here.rpartition("/")[0])
from client import main  # noqa: E402

# _exit, not sys.exit: the interpreter's orderly shutdown costs a millisecond, and the client has nothing
# buffered to flush (it writes with posix.write)
posix._exit(main())
