"""Files a library or program opens at run time, beyond its ELF closure: data files, plug-ins it
dlopen()s, help texts, its configuration. A job whose closure holds the library brings them too.

Declared once, in RUNTIME_FILES: the library's soname (or a program's name) -> the paths, each either
absolute or relative to the directory of the library's real file (`{libdir}`, so the table holds for
any multiarch directory). A directory comes whole, as a tree (described once and watched, as a --cache
tree is), with the ELF closure of every plug-in in it. Without them:
- `file` says only "cannot open magic file" (libmagic's magic.mgc); `lspci` prints numbers (pci.ids);
- Open MPI's orted and ranks stop in opal_init: its components (the MCA plug-ins: ess, plm, oob, btl,
  pml, ...) are dlopen'd from its own lib/openmpi3, its messages read from /usr/share/openmpi's help
  files, its defaults from /etc/openmpi;
- PMIx (Open MPI's process manager interface) loads its own plug-ins and help files alike;
- UCX (MPICH's ch4:ucx device, Open MPI's ucx pml) finds its transports as modules in {libdir}/ucx, and
  libfabric its providers in {libdir}/libfabric.
"""

from __future__ import annotations

import os
import posixpath

RUNTIME_FILES: dict[str, tuple[str, ...]] = {
    "libmagic.so.1": ("/usr/share/misc/magic.mgc", "/usr/share/file/magic.mgc"),
    "libpci.so.3": ("/usr/share/misc/pci.ids",),
    "libsensors.so.5": ("/etc/sensors3.conf", "/etc/sensors.d"),
    "libopen-pal.so.40": ("{libdir}/openmpi/lib/openmpi3", "/usr/share/openmpi", "/etc/openmpi"),
    "libpmix.so.2": ("{libdir}/pmix", "{libdir}/../share/pmix", "{libdir}/../share/pmix-mca-params.conf"),
    "libucs.so.0": ("{libdir}/ucx",),
    "libfabric.so.1": ("{libdir}/libfabric",),
}


def runtime_files(real_file: str) -> list[str]:
    """RUNTIME_FILES' paths for a library or program (its real file: libmagic.so.1.0.0), those the master
    has, as absolute paths."""
    name = posixpath.basename(real_file)
    libdir = posixpath.dirname(real_file)
    for soname, paths in RUNTIME_FILES.items():
        if name == soname or name.startswith(soname + "."):
            found = [posixpath.normpath(path.replace("{libdir}", libdir)) for path in paths]
            return [path for path in found if os.path.lexists(path)]
    return []
