"""A node's log as bpstat --log prints it: one line per entry, the master's time, the stage, the level and
the message; a kernel record also shows its own time stamp, as dmesg does."""

from __future__ import annotations

import time

from agent import protocol as p
from beoboot.master.printable import printable


def format_entry(entry: p.NodeLogEntry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.t)) + f".{int(entry.t % 1 * 1000):03d}"
    where = str(entry.stage)
    if entry.source == "kernel":
        stamp = f" [{entry.kernel_time:12.6f}]" if entry.kernel_time is not None else ""
        where += f" kernel{stamp}"
    return f"{when} {where} {printable(entry.level)}: {printable(entry.message)}\n"


def format_text(node_log: p.NodeLog) -> str:
    return "".join(map(format_entry, node_log.entries))
