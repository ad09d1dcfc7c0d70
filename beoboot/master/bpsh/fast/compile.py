"""Compile bpsh.c into the `bpsh` executable, with the constants it shares with client.py taken from there.

Run by build.py (.venv/bin/bpsh) and by setup.py's build hook (the `bpsh` that `pip install` makes), with
the system's C compiler; standard library only, since build.py runs it before the virtualenv exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from beoboot.master.bpsh import client

SOURCE = Path(__file__).with_name("bpsh.c")
EXECUTABLE_PY = Path(client.__file__).with_name("executable.py")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")
# glibc's static start skips the dynamic loader's relocations: half of the compiled client's own start
STATIC = ("-static",)


class CompileError(Exception):
    pass


def venv_fallback(python: str = sys.executable) -> list[str]:
    """The Python client as build.py's .venv/bin/bpsh ran it before: the client file under -IS."""
    return [python, "-IS", str(EXECUTABLE_PY)]


def installed_fallback(python: str = sys.executable) -> list[str]:
    """The Python client of the beoboot that `python` imports (a pip install, wherever it put it). bpsh.c
    runs it with the python3 beside the executable instead, when there is one (BESIDE): a wheel is built
    by one interpreter and may be installed for another's virtualenv."""
    return [python, "-I", "-c", "import posix; from beoboot.master.bpsh.client import main; posix._exit(main())"]


BESIDE = "python3"


def c_string(text: str | bytes) -> str:
    """A C string literal of exactly these bytes (octal escapes: nothing in them needs thought)."""
    data = text.encode() if isinstance(text, str) else text
    return '"' + "".join(f"\\{byte:03o}" for byte in data) + '"'


def c_strings(items: Sequence[str]) -> str:
    """A null-terminated array initializer of string literals."""
    return "{" + "".join(c_string(item) + ", " for item in items) + "0}"


def rules_header(fallback: Sequence[str], beside: str | None = None) -> str:
    """What bpsh.c shares with client.py, as client.py declares it; and the Python client to run for the
    rest (its argv, to which the command line's arguments are added; with `beside`, the interpreter of that
    name beside the executable, if there is one, instead of fallback[0])."""
    assert "\0" not in client.SHELL_SYNTAX
    lines = {
        "REQUEST_MAGIC": c_string(client.REQUEST_MAGIC),
        "SOCKET_ENV": c_string(client.SOCKET_ENV),
        "DEFAULT_SOCKET": c_string(client.DEFAULT_SOCKET),
        "SHELL": c_string(client.SHELL),
        "SHELL_SYNTAX": c_string("".join(sorted(client.SHELL_SYNTAX))),
        "NODE_SET_CHARS": c_string(client.NODE_SET_CHARS),
        "SSH_FLAGS": f"((const char *const[]){c_strings(sorted(client.SSH_FLAGS))})",
        "SSH_VALUED": f"((const char *const[]){c_strings(sorted(client.SSH_VALUED))})",
        "FORWARDED_SIGNALS": "{" + ", ".join(str(int(s)) for s in client.FORWARDED_SIGNALS) + "}",
        "CLOSED_EARLY": c_string(client.CLOSED_EARLY),
        "NO_EXIT": str(client.NO_EXIT),
        "MAX_REQUEST": str(client.MAX_REQUEST),
        "RECORD_MAX": str(client.RECORD_MAX),
        "REATTACH_MAGIC": c_string(client.REATTACH_MAGIC),
        "REATTACH_TIMEOUT": repr(float(client.REATTACH_TIMEOUT)),
        "MAX_REATTACH_TIMEOUT": repr(float(client.MAX_REATTACH_TIMEOUT)),
        "REATTACH_POLL": repr(float(client.REATTACH_POLL)),
        "FALLBACK_ARGV": "{" + ", ".join(c_string(word) for word in fallback) + "}",
    }
    if beside is not None:
        lines["FALLBACK_BESIDE"] = c_string(beside)
    return "/* written by beoboot/master/bpsh/fast/compile.py from client.py */\n" + "".join(
        f"#define {name} {value}\n" for name, value in lines.items()
    )


def compile_client(output: Path, fallback: Sequence[str], beside: str | None = None, cc: str | None = None) -> Path:
    """Compile bpsh.c to `output` (written under a temporary name, then renamed), falling back to the
    Python client `fallback` names for what it does not handle (see rules_header for `beside`)."""
    cc = cc or os.environ.get("CC") or "cc"
    if not shutil.which(cc):
        raise CompileError(f"no C compiler {cc!r} to compile {SOURCE}: install gcc and libc6-dev (build.py does)")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    building = output.with_name(f".{output.name}.beoboot-tmp-{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="bpsh-compile-") as scratch:
        header = Path(scratch) / "bpsh_rules.h"
        header.write_text(rules_header(fallback, beside))
        argv = [cc, *CFLAGS, *STATIC, "-include", str(header), "-o", str(building), str(SOURCE)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            building.unlink(missing_ok=True)
            raise CompileError(f"compiling {SOURCE} failed ({' '.join(argv)}):\n{done.stderr}")
    building.chmod(0o755)
    building.replace(output)
    return output


if __name__ == "__main__":
    # python3 -m beoboot.master.bpsh.fast.compile OUTPUT: a bpsh that falls back to this checkout's client
    compile_client(Path(sys.argv[1]), venv_fallback())
