"""The master's small objects in memory: read once, dropped least recently served first, never stale."""

import os

from beoboot.master.objects import ObjectStore
from beoboot.master.smallobjects import SmallObjects


def test_each_object_is_read_once_and_the_held_bytes_stay_bounded(tmp_path):
    store = ObjectStore()
    paths = []
    for index in range(4):
        path = tmp_path / f"f{index}"
        path.write_bytes(os.urandom(1000))
        paths.append(path)
    small = SmallObjects(limit=2500)
    found = [store.digest(str(path)) for path in paths]
    assert small.read(found[0]) == paths[0].read_bytes()
    assert small.read(found[0]) == paths[0].read_bytes()
    assert small.reads == 1
    for digest in found[1:]:
        small.read(digest)
    assert small.held <= 2500 and small.reads == 4
    small.read(found[0])  # dropped as the least recently served: read again
    assert small.reads == 5


def test_a_file_rewritten_since_it_was_hashed_is_not_served(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"first")
    found = ObjectStore().digest(str(path))
    path.write_bytes(b"other")
    assert SmallObjects().read(found) is None
