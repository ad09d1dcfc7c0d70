"""The master's small objects in memory: read once, dropped least recently served first, never stale."""

import os

from beoboot.master.objects import ObjectStore
from beoboot.master.smallobjects import SmallObjects, read_object


def test_each_object_is_kept_once_and_the_held_bytes_stay_bounded(tmp_path):
    store = ObjectStore()
    found = []
    for index in range(4):
        path = tmp_path / f"f{index}"
        path.write_bytes(os.urandom(1000))
        found.append(store.digest(str(path)))
    small = SmallObjects(limit=2500)
    assert small.cached(found[0]) is None
    small.keep(found[0], read_object(found[0]))
    assert small.cached(found[0]) == (tmp_path / "f0").read_bytes()
    for digest in found[1:]:
        small.keep(digest, read_object(digest))
    assert small.held <= 2500
    assert small.cached(found[0]) is None  # the least recently served went first
    assert small.cached(found[3]) == (tmp_path / "f3").read_bytes()


def test_a_file_rewritten_since_it_was_hashed_is_not_read(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"first")
    found = ObjectStore().digest(str(path))
    path.write_bytes(b"other")
    assert read_object(found) is None
