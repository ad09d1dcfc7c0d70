"""`beoboot-build nics`: the NIC driver table of a kernel, and whether it covers a site's hardware."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from agent.config import NicAlias
from beoboot.commands.modules import add_kernel_arguments, open_kernel
from beoboot.errors import UsageError
from beoboot.resolve import firmware, nics
from beoboot.resolve.kmod import KernelModules

EXIT_NOT_COVERED = 3  # distinct from usage (2) and other errors (1), so scripts can tell them apart


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "nics",
        help="list the NIC driver table, or check an lspci dump against it",
        description="List the PCI alias patterns of the kernel's network drivers (modules under "
        "kernel/drivers/net/) and the module each selects. With --check, read an `lspci -n` or `lspci -nn` "
        "dump and tell, for each network device (class 02xx), which driver the images would load. "
        "`lspci -n` shows no subsystem ids, so they are taken as wildcards: a driver that claims only "
        "certain subsystems may be reported although it would not bind (`lspci -nnv` dumps avoid that).",
    )
    add_kernel_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--drivers",
        nargs="+",
        metavar="PATTERN",
        help="module names or globs ('e1000*'), or 'all' for every Ethernet driver (default: every network driver)",
    )
    parser.add_argument(
        "--check",
        metavar="LSPCI_TXT",
        help="`lspci -n` dump; exit 3 if a NIC is not covered or its driver's firmware is missing",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kmods = open_kernel(args)
    drivers = nics.select_drivers(kmods, args.drivers) if args.drivers else None
    table = nics.nic_table(kmods, drivers)
    if args.check:
        return _check(args, table, kmods)
    if args.json:
        print(json.dumps({"kernel": kmods.version, "nic_table": [asdict(row) for row in table]}, indent=1))
    else:
        for row in table:
            print(f"{row.pattern} {row.module}")
    return 0


def _check(args: argparse.Namespace, table: list[NicAlias], kmods: KernelModules) -> int:
    try:
        text = Path(args.check).read_text(errors="replace")
    except OSError as exc:
        raise UsageError(
            f"cannot read lspci dump {args.check}: {exc.strerror}", hint="make one with `lspci -n > FILE`"
        ) from None
    coverage = nics.check_devices(nics.parse_lspci(text, args.check), table)
    # a driver without its firmware loads, but its NIC gets no link: as good as none
    missing = {
        c.device.slot: [fw for fw in firmware.of_modules(kmods, list(c.modules)) if fw.path is None] for c in coverage
    }
    if args.json:
        rows = [
            {
                **asdict(c.device),
                "modules": list(c.modules),
                "covered": c.covered,
                "missing_firmware": [
                    {"module": fw.module, "name": fw.name, "package": fw.package} for fw in missing[c.device.slot]
                ],
            }
            for c in coverage
        ]
        print(json.dumps(rows, indent=1))
    else:
        for c in coverage:
            d = c.device
            what = " + ".join(c.modules) if c.covered else "NOT COVERED"
            print(f"{d.slot} {d.class_code}: {d.vendor}:{d.device}  {what}")
            for fw in missing[d.slot]:
                print(f"  {fw.module}: firmware {fw.name} missing from the sysroot (Debian: {fw.package})")
        if not coverage:
            print(f"no network devices (class 02xx) in {args.check}")
    lacking = any(not c.covered for c in coverage) or any(missing.values())
    return EXIT_NOT_COVERED if lacking else 0
