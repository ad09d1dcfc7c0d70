"""The library search: dynamic string tokens, ld.so.conf, and resolutions in small trees made in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_elf import EM_386, build_elf  # tests/ is on sys.path under pytest

from beoboot.errors import ElfError, MissingLibraryError
from beoboot.resolve.elf import DF_1_NODEFLIB, ET_EXEC
from beoboot.resolve.ldso import (
    ConfEntry,
    ConfKind,
    LibraryResolver,
    Needed,
    expand_dst,
    is_elf,
    parse_ld_so_conf,
    read_ld_so_conf,
)
from beoboot.resolve.sysroot import Sysroot

INTERP = "/lib64/ld-linux-x86-64.so.2"
MULTIARCH = "/usr/lib/x86_64-linux-gnu"


# -- dynamic string tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("$ORIGIN", "/opt/app/bin"),
        ("$ORIGIN/../lib", "/opt/app/bin/../lib"),
        ("${ORIGIN}/../lib", "/opt/app/bin/../lib"),
        ("/usr/$LIB/plugins", "/usr/lib/x86_64-linux-gnu/plugins"),
        ("/usr/${LIB}", "/usr/lib/x86_64-linux-gnu"),
        ("/opt/$PLATFORM/lib", "/opt/x86_64/lib"),
        ("/opt/${PLATFORM}lib", "/opt/x86_64lib"),
        ("$ORIGIN/$PLATFORM", "/opt/app/bin/x86_64"),
        ("/opt/$ORIGINAL", "/opt/$ORIGINAL"),  # not a token: kept as written, as glibc does
        ("/opt/$FOO/lib", "/opt/$FOO/lib"),
        ("/plain/dir", "/plain/dir"),
    ],
)
def test_expand_dst(entry, expected):
    assert expand_dst(entry, "/opt/app/bin", "lib/x86_64-linux-gnu", "x86_64") == expected


def test_expand_dst_without_a_value_drops_the_entry():
    assert expand_dst("/opt/$PLATFORM", "/o", "lib", None) is None
    assert expand_dst("/opt/other", "/o", "lib", None) == "/opt/other"


# -- ld.so.conf -----------------------------------------------------------------------------------------

D, I = ConfKind.DIRECTORY, ConfKind.INCLUDE  # noqa: E741 (the table below reads as D and I)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/usr/local/lib\n", [ConfEntry(D, "/usr/local/lib")]),
        ("  /opt/lib/  # a comment\n# whole line\n\n", [ConfEntry(D, "/opt/lib")]),
        ("include /etc/ld.so.conf.d/*.conf\n", [ConfEntry(I, "/etc/ld.so.conf.d/*.conf")]),
        ("include ld.so.conf.d/*.conf\n", [ConfEntry(I, "/etc/ld.so.conf.d/*.conf")]),
        ("include\ta.conf   /abs/b.conf\n", [ConfEntry(I, "/etc/a.conf"), ConfEntry(I, "/abs/b.conf")]),
        ("hwcap 1 nosegneg\n/lib\n", [ConfEntry(D, "/lib")]),
        ("relative/dir\n/ok\n", [ConfEntry(D, "/ok")]),
        ("/\n", [ConfEntry(D, "/")]),
    ],
)
def test_parse_ld_so_conf(text, expected):
    assert parse_ld_so_conf(text, "/etc/ld.so.conf") == expected


def make_tree(root: Path, files: dict[str, bytes | str]) -> Sysroot:
    """Files (bytes) and symbolic links (str targets, absolute ones meant inside the tree) under root."""
    for path, content in files.items():
        host = root / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            host.symlink_to(content)
        else:
            host.write_bytes(content)
    return Sysroot(root)


def test_ld_so_conf_includes_are_read_inside_the_sysroot(tmp_path):
    sysroot = make_tree(
        tmp_path,
        {
            "/etc/ld.so.conf": b"/first\ninclude ld.so.conf.d/*.conf\n/last\n",
            # An absolute link: must lead to <sysroot>/srv/conf.d, never to the build host's /srv.
            "/etc/ld.so.conf.d": "/srv/conf.d",
            "/srv/conf.d/b.conf": b"/from-b\ninclude /srv/nested.conf\n",
            "/srv/conf.d/a.conf": b"/from-a\n",
            "/srv/conf.d/ignored.txt": b"/never\n",
            "/srv/nested.conf": b"/nested\n",
        },
    )
    assert read_ld_so_conf(sysroot) == ["/first", "/from-a", "/from-b", "/nested", "/last"]


def test_ld_so_conf_include_loop_stops(tmp_path):
    sysroot = make_tree(tmp_path, {"/etc/ld.so.conf": b"/a\ninclude /etc/ld.so.conf\n"})
    dirs = read_ld_so_conf(sysroot)
    assert dirs[0] == "/a" and len(dirs) < 100


def test_missing_ld_so_conf_is_empty(tmp_path):
    assert read_ld_so_conf(Sysroot(tmp_path)) == []


# -- resolution in hand-made trees ----------------------------------------------------------------------


def program(**kwargs) -> bytes:
    return build_elf(elf_type=ET_EXEC, interp=INTERP, **kwargs)


def library(soname: str, **kwargs) -> bytes:
    return build_elf(soname=soname, **kwargs)


BASE = {
    INTERP: library("ld-linux-x86-64.so.2"),
    f"{MULTIARCH}/libc.so.6": library("libc.so.6", needed=("ld-linux-x86-64.so.2",)),
}


def paths(closure: list[Needed]) -> list[str]:
    return [n.path for n in closure]


def test_interpreter_and_libc_once_each(tmp_path):
    sysroot = make_tree(tmp_path, {**BASE, "/bin/prog": program(needed=("libc.so.6",))})
    closure = LibraryResolver(sysroot).closure(["/bin/prog"])
    assert closure == [
        Needed("/bin/prog", None, None),
        Needed(INTERP, "/bin/prog", INTERP),
        Needed(f"{MULTIARCH}/libc.so.6", "/bin/prog", "libc.so.6"),
    ]


@pytest.mark.parametrize(
    ("case", "prog", "extra", "expected"),
    [
        # RUNPATH wins over the default directories.
        (
            "runpath",
            program(needed=("libx.so.1",), runpath="/opt/b"),
            {"/opt/b/libx.so.1": library("libx.so.1"), f"{MULTIARCH}/libx.so.1": library("libx.so.1")},
            "/opt/b/libx.so.1",
        ),
        # With both, RPATH is ignored.
        (
            "rpath ignored",
            program(needed=("libx.so.1",), rpath="/opt/a", runpath="/opt/b"),
            {"/opt/a/libx.so.1": library("libx.so.1"), "/opt/b/libx.so.1": library("libx.so.1")},
            "/opt/b/libx.so.1",
        ),
        (
            "rpath alone",
            program(needed=("libx.so.1",), rpath="/opt/a"),
            {"/opt/a/libx.so.1": library("libx.so.1"), f"{MULTIARCH}/libx.so.1": library("libx.so.1")},
            "/opt/a/libx.so.1",
        ),
        (
            "$ORIGIN",
            program(needed=("libx.so.1",), runpath="$ORIGIN/../lib"),
            {"/opt/app/lib/libx.so.1": library("libx.so.1")},
            "/opt/app/lib/libx.so.1",
        ),
        (
            "${ORIGIN}",
            program(needed=("libx.so.1",), rpath="${ORIGIN}/../lib"),
            {"/opt/app/lib/libx.so.1": library("libx.so.1")},
            "/opt/app/lib/libx.so.1",
        ),
        (
            "$LIB",
            program(needed=("libx.so.1",), runpath="/opt/$LIB"),
            {"/opt/lib/x86_64-linux-gnu/libx.so.1": library("libx.so.1")},
            "/opt/lib/x86_64-linux-gnu/libx.so.1",
        ),
        (
            "$PLATFORM",
            program(needed=("libx.so.1",), runpath="/opt/$PLATFORM"),
            {"/opt/x86_64/libx.so.1": library("libx.so.1")},
            "/opt/x86_64/libx.so.1",
        ),
        # A 32-bit library first on the path is skipped, as glibc skips it.
        (
            "wrong class",
            program(needed=("libx.so.1",), runpath="/opt/32"),
            {
                "/opt/32/libx.so.1": library("libx.so.1", bits=32, machine=EM_386),
                f"{MULTIARCH}/libx.so.1": library("libx.so.1"),
            },
            f"{MULTIARCH}/libx.so.1",
        ),
        (
            "not elf skipped",
            program(needed=("libx.so.1",), runpath="/opt/junk"),
            {"/opt/junk/libx.so.1": b"INPUT(libx.so.1.0)\n", f"{MULTIARCH}/libx.so.1": library("libx.so.1")},
            f"{MULTIARCH}/libx.so.1",
        ),
        # ld.so.conf directories come before the system directories.
        (
            "ld.so.conf",
            program(needed=("libx.so.1",)),
            {
                "/etc/ld.so.conf": b"include /etc/ld.so.conf.d/*.conf\n",
                "/etc/ld.so.conf.d/x.conf": b"/opt/conf\n",
                "/opt/conf/libx.so.1": library("libx.so.1"),
                f"{MULTIARCH}/libx.so.1": library("libx.so.1"),
            },
            "/opt/conf/libx.so.1",
        ),
        (
            "slash in name",
            program(needed=("$ORIGIN/../lib/libx.so.1",)),
            {"/opt/app/lib/libx.so.1": library("libx.so.1")},
            "/opt/app/lib/libx.so.1",
        ),
    ],
)
def test_where_a_library_is_found(tmp_path, case, prog, extra, expected):
    sysroot = make_tree(tmp_path, {**BASE, "/opt/app/bin/prog": prog, **extra})
    closure = LibraryResolver(sysroot).closure(["/opt/app/bin/prog"])
    assert expected in paths(closure), case


def test_rpath_is_inherited_but_runpath_is_not(tmp_path):
    """libx (found through the program's path) needs liby, which only that same directory has."""
    libs = {
        **BASE,
        "/opt/a/libx.so.1": library("libx.so.1", needed=("liby.so.1",)),
        "/opt/a/liby.so.1": library("liby.so.1"),
        "/bin/with-rpath": program(needed=("libx.so.1",), rpath="/opt/a"),
        "/bin/with-runpath": program(needed=("libx.so.1",), runpath="/opt/a"),
    }
    resolver = LibraryResolver(make_tree(tmp_path, libs))
    assert "/opt/a/liby.so.1" in paths(resolver.closure(["/bin/with-rpath"]))
    with pytest.raises(MissingLibraryError) as caught:
        resolver.closure(["/bin/with-runpath"])
    assert (caught.value.library, caught.value.needed_by) == ("liby.so.1", "/opt/a/libx.so.1")


def test_missing_library_message_names_everything(tmp_path):
    sysroot = make_tree(tmp_path, {**BASE, "/bin/prog": program(needed=("libgone.so.3",), runpath="/opt/r")})
    with pytest.raises(MissingLibraryError) as caught:
        LibraryResolver(sysroot).closure(["/bin/prog"])
    message = str(caught.value)
    assert message.startswith("library libgone.so.3 needed by /bin/prog not found (searched /opt/r, ")
    assert MULTIARCH in message and "hint:" in message


def test_nodeflib_skips_the_default_directories(tmp_path):
    sysroot = make_tree(
        tmp_path,
        {
            **BASE,
            "/bin/prog": program(needed=("libx.so.1",), flags_1=DF_1_NODEFLIB),
            f"{MULTIARCH}/libx.so.1": library("libx.so.1"),
        },
    )
    with pytest.raises(MissingLibraryError, match="libx.so.1"):
        LibraryResolver(sysroot).closure(["/bin/prog"])


def test_merged_usr_reports_the_loader_path(tmp_path):
    """/lib -> /usr/lib (absolute, inside the tree) and ld.so.conf listing /lib/<triplet> first, as Debian does."""
    sysroot = make_tree(
        tmp_path,
        {
            "/lib": "/usr/lib",
            "/lib64": "usr/lib64",
            "/usr/lib64/ld-linux-x86-64.so.2": f"{MULTIARCH}/ld-linux-x86-64.so.2",
            f"{MULTIARCH}/ld-linux-x86-64.so.2": library("ld-linux-x86-64.so.2"),
            f"{MULTIARCH}/libc.so.6": library("libc.so.6", needed=("ld-linux-x86-64.so.2",)),
            "/etc/ld.so.conf": b"/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n",
            "/usr/bin/prog": program(needed=("libc.so.6",)),
        },
    )
    resolver = LibraryResolver(sysroot)
    assert paths(resolver.closure(["/usr/bin/prog"])) == [
        "/usr/bin/prog",
        INTERP,
        "/lib/x86_64-linux-gnu/libc.so.6",
    ]
    assert {"/lib/x86_64-linux-gnu", MULTIARCH, "/lib", "/usr/lib"} <= set(resolver.search_dirs)


def test_dlopen_names_are_resolved_with_their_needs(tmp_path):
    sysroot = make_tree(
        tmp_path,
        {
            **BASE,
            "/bin/prog": program(needed=("libc.so.6",)),
            f"{MULTIARCH}/libnss_files.so.2": library("libnss_files.so.2", needed=("libc.so.6", "libextra.so.1")),
            f"{MULTIARCH}/libextra.so.1": library("libextra.so.1"),
            f"{MULTIARCH}/libgcc_s.so.1": library("libgcc_s.so.1", needed=("libc.so.6",)),
            # Without a program (so without PT_INTERP) libc's need of ld.so is searched for like any library.
            f"{MULTIARCH}/ld-linux-x86-64.so.2": INTERP,
        },
    )
    resolver = LibraryResolver(sysroot)
    closure = resolver.closure(["/bin/prog"], dlopen=["libnss_files.so.2", f"{MULTIARCH}/libgcc_s.so.1"])
    assert closure[3:] == [
        Needed(f"{MULTIARCH}/libnss_files.so.2", None, "libnss_files.so.2"),
        Needed(f"{MULTIARCH}/libextra.so.1", f"{MULTIARCH}/libnss_files.so.2", "libextra.so.1"),
        Needed(f"{MULTIARCH}/libgcc_s.so.1", None, f"{MULTIARCH}/libgcc_s.so.1"),
    ]
    alone = paths(resolver.closure([], dlopen=["libnss_files.so.2"]))
    assert alone[0] == f"{MULTIARCH}/libnss_files.so.2" and f"{MULTIARCH}/libextra.so.1" in alone
    with pytest.raises(MissingLibraryError, match="libnss_nope.so.2"):
        resolver.closure(["/bin/prog"], dlopen=["libnss_nope.so.2"])


def test_roots_each_have_their_own_rpath(tmp_path):
    sysroot = make_tree(
        tmp_path,
        {
            **BASE,
            "/bin/a": program(needed=("libx.so.1",), rpath="/opt/a"),
            "/bin/b": program(needed=("libx.so.1",), rpath="/opt/b"),
            "/opt/a/libx.so.1": library("libx.so.1"),
            "/opt/b/libx.so.1": library("libx.so.1"),
        },
    )
    found = paths(LibraryResolver(sysroot).closure(["/bin/a", "/bin/b"]))
    assert "/opt/a/libx.so.1" in found and "/opt/b/libx.so.1" in found


def test_root_errors(tmp_path):
    sysroot = make_tree(tmp_path, {"/etc/passwd": b"root:x:0:0::/root:/bin/sh\n"})
    resolver = LibraryResolver(sysroot)
    with pytest.raises(ElfError, match="/etc/passwd is not an ELF file"):
        resolver.closure(["/etc/passwd"])
    with pytest.raises(ElfError, match="/bin/none: no such file"):
        resolver.closure(["/bin/none"])
    assert not is_elf(sysroot, "/etc/passwd") and not is_elf(sysroot, "/bin/none")


# -- real binaries made with gcc, in a sysroot of copied libraries ------------------------------------------

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or not os.path.exists(INTERP), reason="needs gcc")


def gcc(*args: str) -> None:
    subprocess.run(["gcc", *args], check=True, capture_output=True)


@needs_gcc
@pytest.mark.parametrize("dtags", ["--enable-new-dtags", "--disable-new-dtags"])
def test_compiled_program_in_a_copied_sysroot(tmp_path, dtags):
    """A program with $ORIGIN/../lib, its library, and the host's libc copied into a tree: found in the tree."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "greet.c").write_text("int greet(void) { return 42; }\n")
    (src / "main.c").write_text("int greet(void);\nint main(void) { return greet() != 42; }\n")
    root = tmp_path / "root"
    (root / "opt/app/bin").mkdir(parents=True)
    (root / "opt/app/lib").mkdir(parents=True)
    gcc(
        "-shared",
        "-fPIC",
        "-Wl,-soname,libgreet.so.1",
        "-o",
        str(root / "opt/app/lib/libgreet.so.1"),
        str(src / "greet.c"),
    )
    gcc(
        str(src / "main.c"),
        "-o",
        str(root / "opt/app/bin/hello"),
        f"-L{root}/opt/app/lib",
        "-l:libgreet.so.1",
        f"-Wl,{dtags},-rpath,$ORIGIN/../lib",
    )

    host = LibraryResolver(Sysroot("/"))
    for needed in host.closure(["/usr/bin/true"])[1:]:  # the interpreter and libc of this machine
        target = root / needed.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(needed.path), target)

    closure = LibraryResolver(Sysroot(root)).closure(["/opt/app/bin/hello"])
    found = paths(closure)
    assert found[:2] == ["/opt/app/bin/hello", INTERP]
    assert "/opt/app/lib/libgreet.so.1" in found
    assert all((root / p.lstrip("/")).is_file() for p in found)
    # The same program, asked of ldd on the host: it agrees (it finds libc on the host, the same paths).
    ldd = subprocess.run(["ldd", str(root / "opt/app/bin/hello")], check=False, capture_output=True, text=True).stdout
    assert f"libgreet.so.1 => {root}/opt/app/bin/../lib/libgreet.so.1" in ldd


@needs_gcc
def test_compiled_32_bit_library_is_skipped(tmp_path):
    """A real i386 library ahead of the 64-bit one on the RUNPATH: skipped."""
    if subprocess.run(["gcc", "-m32", "-E", "-x", "c", "/dev/null"], check=False, capture_output=True).returncode:
        pytest.skip("gcc cannot target i386")
    src = tmp_path / "x.c"
    src.write_text("int x(void) { return 1; }\n")
    root = tmp_path / "root"
    (root / "opt/32").mkdir(parents=True)
    (root / MULTIARCH.lstrip("/")).mkdir(parents=True)
    try:
        gcc(
            "-m32",
            "-shared",
            "-nostdlib",
            "-fPIC",
            "-Wl,-soname,libx.so.1",
            "-o",
            str(root / "opt/32/libx.so.1"),
            str(src),
        )
    except subprocess.CalledProcessError:
        pytest.skip("gcc cannot link i386 objects")
    gcc("-shared", "-fPIC", "-Wl,-soname,libx.so.1", "-o", str(root / MULTIARCH.lstrip("/") / "libx.so.1"), str(src))
    make_tree(root, {**BASE, "/bin/prog": program(needed=("libx.so.1",), runpath="/opt/32")})
    assert f"{MULTIARCH}/libx.so.1" in paths(LibraryResolver(Sysroot(root)).closure(["/bin/prog"]))


# -- the deps sub-command ---------------------------------------------------------------------------------


def test_deps_command_prints_sorted_paths_and_json(tmp_path, capsys):
    import json

    from beoboot.cli import main

    make_tree(tmp_path, {**BASE, "/bin/prog": program(needed=("libc.so.6",))})
    # FILE as a path inside the sysroot, or as a build-host path under it: the same.
    assert main(["deps", "--sysroot", str(tmp_path), "/bin/prog", f"{tmp_path}/bin/prog"]) == 0
    assert capsys.readouterr().out.splitlines() == ["/bin/prog", INTERP, f"{MULTIARCH}/libc.so.6"]
    assert main(["deps", "--sysroot", str(tmp_path), "--json", "/bin/prog"]) == 0
    assert json.loads(capsys.readouterr().out)[2] == {
        "path": f"{MULTIARCH}/libc.so.6",
        "needed_by": "/bin/prog",
        "soname": "libc.so.6",
    }
    assert main(["deps", "--sysroot", str(tmp_path), "/etc/none"]) == 1
    assert "/etc/none: no such file" in capsys.readouterr().err
