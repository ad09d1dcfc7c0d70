"""Console commands: `beoserv` (run the master server), `bpstat` (show the nodes) and `bps` (the jobs)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import requests

from agent import protocol as p
from beoboot.configfile import render
from beoboot.errors import BeobootError, UsageError
from beoboot.master import hwtable, nodelog
from beoboot.master import timeline as tl
from beoboot.master.bpsh import client as bpsh
from beoboot.master.config import MasterConfig, load_config
from beoboot.master.printable import printable
from beoboot.master.server import ServerOptions, parse_listen, serve, setup_logging

DEFAULT_MASTER = "http://127.0.0.1:8080"


def _run(prog: str, body, args: argparse.Namespace) -> int:
    try:
        return int(body(args) or 0)
    except BeobootError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


# --- beoserv ---------------------------------------------------------------------------------------------


def beoserv_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beoserv",
        description="The cluster master: boot files, node registry.",
        epilog="--config FILE: a TOML file of these keys, shown with their defaults:\n\n"
        + "\n".join(render(MasterConfig())),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the keys one a line, as they are
    )
    parser.add_argument("--root", type=Path, required=True, help="boot tree to serve (the builder's OUTDIR)")
    parser.add_argument("--listen", default="0.0.0.0:8080", help="HOST:PORT (default %(default)s; port 0: any)")
    parser.add_argument("--db", type=Path, required=True, help="node registry (SQLite file, created if missing)")
    parser.add_argument("--config", type=Path, help="beoserv TOML config; re-read on SIGHUP")
    parser.add_argument("--debug", action="store_true", help="log at debug level, with the traceback of any failure")
    parser.add_argument(
        "--bpsh-socket",
        default=bpsh.DEFAULT_SOCKET,
        metavar="PATH",
        help="local socket bpsh connects to (default %(default)s; 'none': no bpsh)",
    )
    return parser


def _beoserv(args: argparse.Namespace) -> int:
    if not args.root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory", hint="pass the builder's output directory")
    host, port = parse_listen(args.listen)
    config = load_config(args.config)
    setup_logging(logging.DEBUG if args.debug else logging.INFO)
    socket = None if args.bpsh_socket == "none" else Path(args.bpsh_socket).absolute()
    options = ServerOptions(
        root=args.root.resolve(), host=host, port=port, db=args.db, config_path=args.config, bpsh_socket=socket
    )
    asyncio.run(serve(options, config))
    return 0


def beoserv_main(argv: list[str] | None = None) -> int:
    return _run("beoserv", _beoserv, beoserv_parser().parse_args(argv))


# --- bpstat ----------------------------------------------------------------------------------------------


def bpstat_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bpstat", description="Show the cluster's nodes as the master sees them.")
    parser.add_argument(
        "--master",
        default=os.environ.get("BEOSERV_URL", DEFAULT_MASTER),
        help="beoserv URL (default $BEOSERV_URL or %(default)s)",
    )
    parser.add_argument(
        "nodes",
        nargs="?",
        metavar="NODESET",
        help="only these nodes: n3, .3 or 3; ranges 0-99 or n[0-99,120]; @up, @down, @all, @GROUP; a,b a!b a&b",
    )
    parser.add_argument(
        "-x", "--exclude", action="append", default=[], metavar="NODESET", help="not these nodes (may be repeated)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeline", metavar="NODE", help="the stage transitions of NODE (3, .3, n3 or MAC)")
    parser.add_argument("--boot", type=int, help="with --timeline: which boot (default: the latest)")
    parser.add_argument("--svg", type=Path, metavar="FILE", help="with --timeline: draw a waterfall SVG to FILE")
    parser.add_argument("--jobs", action="store_true", help="the bpsh jobs running on the nodes (as bps)")
    parser.add_argument(
        "--hardware", action="store_true", help="each node's devices with their drivers, and those with none"
    )
    parser.add_argument("--all", action="store_true", help="with --jobs: recently ended jobs too")
    parser.add_argument("--log", metavar="NODE", help="the log lines NODE sent (its agent's and its kernel's)")
    parser.add_argument("--kernel", action="store_true", help="with --log: only the kernel's (/dev/kmsg)")
    parser.add_argument(
        "--lines", type=int, default=1000, metavar="N", help="with --log: the last N (default %(default)s)"
    )
    return parser


def _get(master: str, path: str, params: dict[str, str] | None = None) -> bytes:
    url = master.rstrip("/") + path
    try:
        response = requests.get(url, params=params, timeout=10)
    except requests.RequestException as exc:
        raise BeobootError(
            f"cannot reach beoserv at {master}: {exc}", hint="is beoserv running? see --master"
        ) from None
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise BeobootError(f"beoserv at {master}: {message}")
    return response.content


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    return (f"{days}d" if days else "") + f"{hours:02d}:{minutes:02d}:{s:02d}"


HASH_SHOWN = 8  # hex digits of an image's sha256 in the table: enough to tell builds apart
STALE_MARK = "*"


def format_booted(booted: p.Booted) -> str:
    """'stage3:b1a43a7b envroot:098dce8d', or '-' when the node named no image."""
    images = " ".join(f"{name}:{digest[:HASH_SHOWN]}" for name, digest in sorted(booted.images.items()))
    return printable(images) or "-"


def format_next_boot(changes: tuple[str, ...] | None) -> str:
    """What the node's next boot would change: 'same', 'new stage3,kernel', or '?' (not known)."""
    if changes is None:
        return "?"
    return "new " + ",".join(changes) if changes else "same"


def format_clock(offset: float | None) -> str:
    """How far the node's clock is behind the master's ('+0.004s'), or '-' when it measured none."""
    return "-" if offset is None else f"{offset:+.3f}s"


def format_nodes(nodes: p.NodeList) -> str:
    header = (
        "node",
        "mac",
        "address",
        "state",
        "stage",
        "last seen",
        "uptime",
        "load",
        "mem avail",
        "agent",
        "kernel",
        "booted",
        "next boot",
        "clock",
        "mounts",
    )
    rows = [header]
    for n in nodes.nodes:
        ago = max(0.0, nodes.server_time - n.last_seen)
        load, memory = "-", "-"
        if n.load is not None:
            load = f"{n.load.load1:.2f}"
            memory = f"{n.load.mem_available_kib >> 10}/{n.load.mem_total_kib >> 10} MiB"
        rows.append(
            (
                n.name + (STALE_MARK if n.next_boot_changes else ""),
                printable(n.mac),
                printable(n.address or "-"),
                str(n.state),
                str(n.stage),
                f"{ago:.0f}s ago",
                format_duration(n.uptime),
                load,
                memory,
                printable(n.agent_version or "-"),
                printable(n.booted.kernel or "-"),
                format_booted(n.booted),
                format_next_boot(n.next_boot_changes),
                format_clock(n.clock_residual if n.clock_residual is not None else n.clock_offset),
                format_mounts(n.mount_failures),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"
    if any(n.next_boot_changes for n in nodes.nodes):
        table += f"{STALE_MARK} booted what the published build has changed since: its next boot brings the new one\n"
    for n in nodes.nodes:
        table += "".join(f"{n.name}: mount {printable(failure)}\n" for failure in n.mount_failures)
    return table


def format_mounts(failures: tuple[str, ...]) -> str:
    """'-', or the targets of the [[mounts]] that failed this boot: 'failed:/home,/scratch'."""
    return "failed:" + ",".join(printable(f.split(":")[0]) for f in failures) if failures else "-"


def format_jobs(jobs: p.JobList) -> str:
    rows = [("job", "node", "pid", "state", "status", "command")]
    for j in jobs.jobs:
        rows.append(
            (
                str(j.job),
                p.node_name(j.node),
                str(j.pid or "-"),
                str(j.state),
                "-" if j.status is None else str(j.status),
                printable(j.command),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] + "\n" for r in rows)


def _jobs(args: argparse.Namespace) -> int:
    jobs = p.from_json(p.JobList, _get(args.master, p.JOBS_PATH))
    if not args.all:
        jobs = p.JobList(tuple(j for j in jobs.jobs if j.state in (p.JobState.STARTING, p.JobState.RUNNING)))
    if args.json:
        print(json.dumps([asdict(j) for j in jobs.jobs], indent=1))
    else:
        sys.stdout.write(format_jobs(jobs))
    return 0


def _bpstat(args: argparse.Namespace) -> int:
    if (args.nodes or args.exclude or args.hardware) and (args.timeline or args.jobs or args.log):
        raise UsageError("a NODESET, -x or --hardware goes with the node table, not with --timeline, --jobs or --log")
    if args.kernel and not args.log:
        raise UsageError("--kernel needs --log NODE")
    if args.log:
        return _log(args)
    if args.jobs:
        return _jobs(args)
    if args.all:
        raise UsageError("--all goes with --jobs")
    if args.svg and not args.timeline:
        raise UsageError("--svg needs --timeline NODE")
    if args.timeline:
        params = {"boot": str(args.boot)} if args.boot is not None else None
        raw = _get(args.master, p.TIMELINE_PATH.format(node=args.timeline), params)
        timeline = p.from_json(p.Timeline, raw)
        if args.svg:
            args.svg.write_text(tl.render_svg(timeline), encoding="utf-8")
            print(f"bpstat: wrote {args.svg}", file=sys.stderr)
        if args.json:
            print(json.dumps(asdict(timeline), indent=1))
        elif not args.svg:
            sys.stdout.write(tl.format_text(timeline))
        return 0
    # the node set goes as typed: beoserv resolves @up and its [groups] (beoboot.master.selection)
    exclude = ",".join(args.exclude)
    chosen = {"nodes": args.nodes or "@all", "exclude": exclude} if args.nodes or exclude else None
    nodes = p.from_json(p.NodeList, _get(args.master, p.NODES_PATH, chosen))
    if args.json:
        print(json.dumps([asdict(n) for n in nodes.nodes], indent=1))
    else:
        sys.stdout.write(hwtable.format_hardware(nodes) if args.hardware else format_nodes(nodes))
    return 0


def _log(args: argparse.Namespace) -> int:
    params = {"limit": str(args.lines), **({"source": "kernel"} if args.kernel else {})}
    node_log = p.from_json(p.NodeLog, _get(args.master, p.NODE_LOG_PATH.format(node=args.log), params))
    if args.json:
        print(json.dumps([asdict(e) for e in node_log.entries], indent=1))
    else:
        sys.stdout.write(nodelog.format_text(node_log))
    return 0


def bpstat_main(argv: list[str] | None = None) -> int:
    return _run("bpstat", _bpstat, bpstat_parser().parse_args(argv))


def bps_main(argv: list[str] | None = None) -> int:
    """`bps [--master URL] [--json] [--all]`: the jobs on the nodes, node, pid, state and command."""
    parser = argparse.ArgumentParser(prog="bps", description="The bpsh jobs running on the nodes.")
    parser.add_argument("--master", default=os.environ.get("BEOSERV_URL", DEFAULT_MASTER), help="beoserv URL")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--all", action="store_true", help="recently ended jobs too")
    return _run("bps", _jobs, parser.parse_args(argv))


if __name__ == "__main__":  # python -m beoboot.master.cli {beoserv|bpstat|bps} ...
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    mains = {"beoserv": beoserv_main, "bpstat": bpstat_main, "bps": bps_main}
    if command not in mains:
        print("usage: python -m beoboot.master.cli {beoserv|bpstat|bps} ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(mains[command](sys.argv[2:]))
