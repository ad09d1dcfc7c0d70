"""The stdlib zip for Python jobs: the master's matching .pyc, else the source; skipped parts left out;
built again after any change to the sources, and only then."""

import io
import os
import py_compile
import subprocess
import zipfile

from master_helpers import stdlib_zip_member

from beoboot.master.manifest.python import StdlibZips
from beoboot.resolve.sysroot import Sysroot


def make_stdlib(root):
    lib = root / "usr/lib/python3.11"
    for relative, text in [
        ("os.py", "name = 'os'\n"),
        ("json/__init__.py", "name = 'json'\n"),
        ("stale.py", "name = 'stale'\n"),
        ("test/test_x.py", ""),
        ("tkinter/__init__.py", ""),
    ]:
        (lib / relative).parent.mkdir(parents=True, exist_ok=True)
        (lib / relative).write_text(text)
    for relative in ("json/__init__.py", "stale.py"):  # as Debian installs them: timestamp .pyc beside
        source = lib / relative
        py_compile.compile(str(source), cfile=str(source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"))
    (lib / "stale.py").write_text("name = 'edited after it was compiled'\n")
    os.utime(lib / "stale.py", (1, 1))
    (lib / "lib-dynload").mkdir()
    return lib


def members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_zip_holds_matching_pyc_else_the_source_and_leaves_out_tests_and_gui(tmp_path):
    lib = make_stdlib(tmp_path)
    zips = StdlibZips()  # its directory, with the zips, lives as long as it does
    stdlib = zips.for_interpreter(Sysroot(tmp_path), "/usr/bin/python3.11")
    assert (stdlib.node_path, stdlib.lib_dynload) == ("/usr/lib/python311.zip", "/usr/lib/python3.11/lib-dynload")
    found = members(stdlib.host_path)
    assert sorted(found) == ["json/__init__.pyc", "os.py", "stale.py"]
    assert found["json/__init__.pyc"] == (lib / "json/__pycache__/__init__.cpython-311.pyc").read_bytes()
    assert found["stale.py"] == b"name = 'edited after it was compiled'\n"  # never the stale .pyc


def test_the_real_stdlib_zip_runs(tmp_path):
    """The master's own stdlib, zipped, imported by its interpreter with nothing else on sys.path."""
    zips = StdlibZips()
    stdlib = zips.for_interpreter(Sysroot("/"), os.path.realpath("/usr/bin/python3"))
    program = (
        "import sys; sys.path[:] = [sys.argv[1], '/usr/lib/python3.11/lib-dynload']\n"
        "import json, email.parser, asyncio, argparse\nprint(json.__file__)"
    )
    ran = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", program, stdlib.host_path], capture_output=True, text=True
    )
    assert ran.stdout == f"{stdlib.host_path}/{stdlib_zip_member('json/__init__.py')}\n", ran.stderr


def test_a_change_to_the_sources_builds_a_new_zip_and_only_then(tmp_path):
    lib = make_stdlib(tmp_path)
    zips = StdlibZips()
    first = zips.for_interpreter(Sysroot(tmp_path), "/usr/bin/python3.11")
    assert zips.for_interpreter(Sysroot(tmp_path), "/usr/bin/python3.11") is first  # nothing changed: no rebuild
    (lib / "json/extra.py").write_text("x = 1\n")
    assert not first.watch.unchanged()
    second = zips.for_interpreter(Sysroot(tmp_path), "/usr/bin/python3.11")
    assert second.host_path != first.host_path and "json/extra.py" in members(second.host_path)
    assert os.path.exists(first.host_path)  # named by content and never rewritten: a node may be fetching it
    with open(lib / "os.py", "a") as f:  # written in place: no new name in any directory
        f.write("more = 1\n")
    third = zips.for_interpreter(Sysroot(tmp_path), "/usr/bin/python3.11")
    assert members(third.host_path)["os.py"].endswith(b"more = 1\n")


def test_no_zip_for_other_programs_or_a_python_that_has_its_own(tmp_path):
    make_stdlib(tmp_path)
    zips = StdlibZips()
    assert zips.for_interpreter(Sysroot(tmp_path), "/usr/bin/perl") is None
    (tmp_path / "usr/lib/python311.zip").write_bytes(io.BytesIO().getvalue())
    assert zips.for_interpreter(Sysroot(tmp_path), "/usr/bin/python3.11") is None  # an ordinary file then


def test_an_extension_module_whose_library_is_missing_is_left_out_not_fatal(tmp_path):
    """It cannot be imported on the master either; every other extension still comes, with its libraries."""
    from beoboot.master.manifest.describe import ManifestBuilder
    from beoboot.master.objects import ObjectStore

    dynload = tmp_path / "lib-dynload"
    dynload.mkdir()
    (tmp_path / "dep.c").write_text("int dep(void) { return 1; }\n")
    (tmp_path / "ext.c").write_text("int dep(void);\nint ext(void) { return dep(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libdep.so"), str(tmp_path / "dep.c")], check=True)
    for name, libraries in (
        ("broken.cpython-311-x86_64-linux-gnu.so", [f"-L{tmp_path}", "-ldep"]),
        ("fine.cpython-311-x86_64-linux-gnu.so", []),
    ):
        source = tmp_path / ("ext.c" if libraries else "dep.c")
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(dynload / name), str(source), *libraries], check=True)
    (tmp_path / "libdep.so").unlink()  # no rpath, and now nowhere: broken's library is missing
    paths = ManifestBuilder(ObjectStore())._extension_modules(str(dynload))
    assert paths[0] == f"{dynload}/" and f"{dynload}/fine.cpython-311-x86_64-linux-gnu.so" in paths
    assert not any("broken" in path for path in paths)
