import os

import pytest

from beoboot.errors import ConflictError, SysrootError
from beoboot.image.filelist import FileList, Kind, Reason, normalised_mode
from beoboot.resolve.sysroot import Sysroot

WHY = Reason("test")


def test_parents_are_created_and_entries_come_sorted():
    files = FileList()
    files.add_bytes("/usr/lib/x/a", b"a", WHY)
    files.add_bytes("/etc/b", b"b", WHY)
    paths = [e.path for e in files.entries()]
    assert paths == ["/", "/etc", "/etc/b", "/usr", "/usr/lib", "/usr/lib/x", "/usr/lib/x/a"]
    assert files["/usr/lib"].kind == Kind.DIR


def test_identical_duplicate_is_ignored_and_conflict_names_both_sources(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_text("1")
    two.write_text("2")
    files = FileList()
    files.add_file("/lib/x", one, Reason("first"))
    files.add_file("/lib/x", one, Reason("again"))
    with pytest.raises(ConflictError) as err:
        files.add_file("/lib/x", two, Reason("second"))
    assert str(one) in str(err.value) and str(two) in str(err.value)


def test_sysroot_links_are_kept_in_the_image(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/libz.so.1.2.13").write_bytes(b"\x7fELF")
    os.symlink("libz.so.1.2.13", root / "usr/lib/x86_64-linux-gnu/libz.so.1")
    os.symlink("usr/lib", root / "lib")
    # an absolute link target means the sysroot's /, not the build host's
    os.symlink("/lib/x86_64-linux-gnu/libz.so.1", root / "usr/lib/libz-abs")
    sysroot = Sysroot(root)
    files = FileList()
    real = files.add_from_sysroot(sysroot, "/usr/lib/libz-abs", WHY)
    assert real == "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"
    assert files["/lib"].target == "usr/lib"
    assert files["/usr/lib/x86_64-linux-gnu/libz.so.1"].target == "libz.so.1.2.13"
    assert files["/usr/lib/libz-abs"].kind == Kind.SYMLINK
    assert files[real].source == str(root / "usr/lib/x86_64-linux-gnu/libz.so.1.2.13")


def test_missing_and_looping_paths_are_errors(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    sysroot = Sysroot(tmp_path)
    with pytest.raises(SysrootError, match="too many levels"):
        sysroot.resolve("/a")
    with pytest.raises(SysrootError, match="/missing"):
        sysroot.resolve("/missing")


@pytest.mark.parametrize(
    "mode, expected", [(0o100600, 0o644), (0o100700, 0o755), (0o100775, 0o755), (0o104755, 0o4755)]
)
def test_modes_do_not_depend_on_the_umask(mode, expected):
    assert normalised_mode(mode) == expected
