"""beoboot.master.manifest.imports: the modules a Python job imports, found on its sys.path as CPython would find them."""

import os

import pytest

from beoboot.master.manifest.imports import PythonImports, python_start


@pytest.mark.parametrize(
    "args, script, code, module",
    [
        (("prog.py", "-c", "x"), "/w/prog.py", None, None),
        (("-u", "-W", "ignore", "-X", "dev", "prog.py"), "/w/prog.py", None, None),
        (("-Wignore", "sub/prog.py"), "/w/sub/prog.py", None, None),
        (("-c", "import os", "prog.py"), None, "import os", None),
        (("-uc", "import os"), None, "import os", None),
        (("-m", "pkg.tool", "arg"), None, None, "pkg.tool"),
        (("-mpkg",), None, None, "pkg"),
        (("--check-hash-based-pycs", "never", "p.py"), "/w/p.py", None, None),
        (("--", "p.py"), "/w/p.py", None, None),
        (("-",), None, None, None),
        ((), None, None, None),
    ],
)
def test_the_command_line_is_read_as_cpython_reads_it(args, script, code, module):
    start = python_start("/usr/bin/python3", "/usr/bin/python3.11", args, "/w")
    assert (start.script, start.code, start.module) == (script, code, module)


def test_options_that_change_sys_path():
    isolated = python_start("p", "/usr/bin/python3.11", ("-I", "x.py"), "/")
    assert isolated.ignore_environment and isolated.no_user_site and isolated.safe_path
    combined = python_start("p", "/usr/bin/python3.11", ("-Es", "x.py"), "/")
    assert combined.ignore_environment and combined.no_user_site and not combined.no_site
    assert python_start("p", "/usr/bin/python3.11", ("-S", "x.py"), "/").no_site


def write(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.fixture
def install(tmp_path):
    """A Python 3.11 under tmp/usr (no Debian layout: PREFIX/lib/python3.11/site-packages), a program
    directory and an extra directory that a .pth names."""
    usr = tmp_path / "usr"
    write(usr / "bin/python3.11")
    lib = usr / "lib/python3.11"
    write(lib / "os.py")
    write(lib / "json/__init__.py", "import pkgb\n")  # the stdlib is not followed: pkgb must not come for it
    site = lib / "site-packages"
    write(site / "pkga/__init__.py", "from . import sub\nimport pkgb\nfrom .missing import nothing\n")
    write(site / "pkga/sub.py", "from ..beyond import x\nimport importlib\nimportlib.import_module('plugin')\n")
    write(site / "pkga/data.txt", "data")
    write(site / "pkga-1.0.dist-info/top_level.txt", "pkga\n")
    write(site / "pkgb.py", "try:\n    import optional\nexcept ImportError:\n    pass\n")
    write(site / "plugin.cpython-311-x86_64-linux-gnu.so")
    write(site / "unused/__init__.py")
    write(site / "ns/inner/__init__.py")  # a namespace package (no ns/__init__.py) holding a regular one
    write(site / "extra.pth", "# a comment\nimport sys\n../../../../more\n")
    write(tmp_path / "more/frompth.py")
    write(tmp_path / "prog/helper.py", "import json\n")
    write(tmp_path / "prog/main.py", "import helper, os, sys\nimport pkga\nimport ns.inner\nimport frompth\n")
    return tmp_path


def found(install, args, env=None, imports=None, cwd=None):
    start = python_start(
        str(install / "usr/bin/python3"), str(install / "usr/bin/python3.11"), args, cwd or str(install / "prog")
    )
    result = (imports or PythonImports()).paths(start, env or {})
    return {os.path.relpath(path, install) for path in result}


SITE = "usr/lib/python3.11/site-packages"


def test_a_script_brings_itself_its_own_modules_and_the_packages_it_reaches(install):
    assert found(install, ("main.py",)) == {
        "prog/main.py",
        "prog/helper.py",
        f"{SITE}/pkga",
        f"{SITE}/pkga-1.0.dist-info",
        f"{SITE}/pkgb.py",
        f"{SITE}/plugin.cpython-311-x86_64-linux-gnu.so",  # importlib.import_module('plugin')
        f"{SITE}/ns/inner",  # the regular package inside the namespace package
        "more/frompth.py",
        f"{SITE}/extra.pth",  # and the .pth that puts its directory on sys.path
    }


def test_code_and_modules_run_with_c_and_m(install):
    assert found(install, ("-c", "import pkgb")) == {f"{SITE}/pkgb.py"}
    assert found(install, ("-c", "from pkga import sub")) >= {f"{SITE}/pkga", f"{SITE}/pkgb.py"}
    write(install / f"{SITE}/tool/__init__.py")
    write(install / f"{SITE}/tool/__main__.py", "import pkgb\n")
    assert found(install, ("-m", "tool")) == {f"{SITE}/tool", f"{SITE}/pkgb.py"}
    assert found(install, ("-c", "import json")) == set()  # the stdlib comes with every Python job


def test_pythonpath_the_user_site_and_what_turns_them_off(install):
    write(install / "pp/onpath.py")
    write(install / "home/.local/lib/python3.11/site-packages/usersite.py")
    env = {"PYTHONPATH": str(install / "pp"), "HOME": str(install / "home")}
    code = ("-c", "import onpath, usersite")
    assert found(install, code, env) == {"pp/onpath.py", "home/.local/lib/python3.11/site-packages/usersite.py"}
    assert found(install, ("-E", *code), env) == {"home/.local/lib/python3.11/site-packages/usersite.py"}
    assert found(install, ("-s", *code), env) == {"pp/onpath.py"}
    assert found(install, ("-I", *code), env) == set()
    assert found(install, code, {**env, "PYTHONNOUSERSITE": "1"}) == {"pp/onpath.py"}


def test_a_virtualenv_brings_its_config_and_its_own_site_packages(install):
    venv = install / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(install / "usr/bin/python3.11", venv / "bin/python")
    write(venv / "pyvenv.cfg", "home = /usr/bin\ninclude-system-site-packages = false\n")
    write(venv / "lib/python3.11/site-packages/invenv.py")
    start = python_start(
        str(venv / "bin/python"), str(install / "usr/bin/python3.11"), ("-c", "import invenv, pkgb"), "/"
    )
    assert {os.path.relpath(p, install) for p in PythonImports().paths(start, {})} == {
        "venv/pyvenv.cfg",
        "venv/lib/python3.11/site-packages/invenv.py",
    }  # no system site-packages: no pkgb
    write(venv / "pyvenv.cfg", "include-system-site-packages = true\n")
    assert f"{SITE}/pkgb.py" in {os.path.relpath(p, install) for p in PythonImports().paths(start, {})}


def test_cached_until_a_directory_searched_or_read_changes(install):
    imports = PythonImports()
    start = python_start(
        str(install / "usr/bin/python3"), str(install / "usr/bin/python3.11"), ("main.py",), str(install / "prog")
    )
    assert imports.paths(start, {}, cached_only=True) is None
    first = imports.paths(start, {})
    assert imports.paths(start, {}, cached_only=True) is first
    write(install / "prog/helper.py", "import json, optional\n")  # edited to import a module not there yet
    assert imports.paths(start, {}, cached_only=True) is None
    assert found(install, ("main.py",), imports=imports) == found(install, ("main.py",))
    write(install / f"{SITE}/optional.py")  # appears where the search looked for it
    assert f"{SITE}/optional.py" in found(install, ("main.py",), imports=imports)
    write(install / f"{SITE}/pkga/sub.py", "import unused\n")  # deep in a package that came
    assert f"{SITE}/unused" in found(install, ("main.py",), imports=imports)


def test_a_local_module_shadows_the_stdlib_as_it_does_on_the_master(install):
    write(install / "prog/os.py")
    assert found(install, ("-c", "import os")) == {"prog/os.py"}
    assert found(install, ("-I", "-c", "import os")) == set()  # -I: no working directory on sys.path


def test_unreadable_or_python2_sources_are_skipped(install):
    write(install / "prog/old.py", "print 'python 2'\nimport pkgb\n")
    assert found(install, ("old.py",)) == {"prog/old.py"}


def test_a_zip_on_pythonpath_comes_whole(install):
    import zipfile

    with zipfile.ZipFile(install / "lib.zip", "w") as z:
        z.writestr("zipped.py", "")
    env = {"PYTHONPATH": str(install / "lib.zip")}
    assert found(install, ("-c", "import zipped"), env) == {"lib.zip"}
