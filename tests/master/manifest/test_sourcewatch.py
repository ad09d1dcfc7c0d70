"""SourceWatch: directories watched through one shared inotify instance."""

import os
import shutil

from beoboot.master.manifest.sourcewatch import InotifyHub, SourceWatch


def test_a_watch_is_changed_for_good_once_anything_happened_or_it_was_closed(tmp_path):
    watch = SourceWatch()
    watch.add(str(tmp_path))
    watch.add(str(tmp_path / "missing"))  # not there: nothing to watch (its parent sees it appear)
    assert watch.unchanged() and watch.unchanged()
    (tmp_path / "new").write_text("")
    assert not watch.unchanged() and not watch.unchanged()
    closed = SourceWatch()
    closed.close()
    assert not closed.unchanged()


def test_more_watches_than_the_kernel_allows_inotify_instances_each_see_only_their_own_directory(tmp_path):
    """fs.inotify.max_user_instances is 128 by default: 300 watches must all still work."""
    hub = InotifyHub()
    directories = [tmp_path / f"d{n}" for n in range(300)]
    watches = []
    for directory in directories:
        directory.mkdir()
        watch = SourceWatch(hub)
        watch.add(str(directory))
        watches.append(watch)
    assert all(watch.unchanged() for watch in watches)
    (directories[7] / "file").write_text("x")
    with open(directories[250] / "file", "w"):
        pass
    assert [n for n, watch in enumerate(watches) if not watch.unchanged()] == [7, 250]
    assert hub.watched_directories() == 300


def test_watches_sharing_a_directory_keep_working_when_one_is_closed(tmp_path):
    hub = InotifyHub()
    first, second = SourceWatch(hub), SourceWatch(hub)
    first.add(str(tmp_path))
    second.add(str(tmp_path))
    assert hub.watched_directories() == 1
    first.close()
    assert not first.unchanged() and second.unchanged()
    (tmp_path / "f").write_text("edited")
    assert not second.unchanged()
    second.close()
    assert hub.watched_directories() == 0


def test_a_file_edited_in_place_or_a_directory_removed_is_a_change(tmp_path):
    hub = InotifyHub()
    (tmp_path / "f").write_text("a")
    (tmp_path / "sub").mkdir()
    edited, removed = SourceWatch(hub), SourceWatch(hub)
    edited.add(str(tmp_path))
    removed.add(str(tmp_path / "sub"))
    with open(tmp_path / "f", "r+") as f:
        f.write("b")
    assert not edited.unchanged() and removed.unchanged()
    shutil.rmtree(tmp_path / "sub")
    assert not removed.unchanged()
    assert os.path.isdir(tmp_path)
