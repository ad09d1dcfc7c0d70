"""The master's bounded caches: PerFile (a value per file, kept while the file's stat key is the same) and
the LRU under it. beoserv runs for months and any user can have it read file after file: no cache may grow
past its bound, and an edited file must be read again."""

import gc
import os
import tracemalloc

from agent import protocol as p
from beoboot.master.manifest import describe
from beoboot.master.manifest.describe import ManifestBuilder
from beoboot.master.manifest.sourcecache import PerFile, RecentlyUsed
from beoboot.master.objects import ObjectStore


def counting_reader():
    reads = []

    def read(path, key, *context):
        reads.append((path, *context))
        with open(path) as f:
            return f.read() + "".join(context)

    return read, reads


def test_per_file_reads_a_file_again_only_when_it_changed(tmp_path):
    read, reads = counting_reader()
    cache = PerFile(read)
    source = tmp_path / "a.py"
    source.write_text("import os\n")
    assert cache(str(source)) == cache(str(source)) == "import os\n" and len(reads) == 1
    source.write_text("import sys, json\n")  # another size and mtime: another stat key
    assert cache(str(source)) == "import sys, json\n" and len(reads) == 2
    os.utime(source, ns=(1, 1))  # the same size, another mtime
    assert cache(str(source)) == "import sys, json\n" and len(reads) == 3
    assert cache(str(source), "+ctx") == "import sys, json\n+ctx" and len(reads) == 4  # the context is keyed
    assert len(cache) == 2


def test_per_file_stays_bounded_and_forgets_the_least_recently_used(tmp_path):
    read, reads = counting_reader()
    cache = PerFile(read, limit=3)
    files = []
    for n in range(50):
        files.append(tmp_path / f"f{n}")
        files[-1].write_text(str(n))
        assert cache(str(files[-1])) == str(n)
        cache(str(files[0]))  # used all along: kept
        assert len(cache) <= 3
    reads.clear()
    cache(str(files[0]))
    cache(str(files[-1]))
    assert reads == []  # both were kept
    cache(str(files[10]))
    assert reads == [(str(files[10]),)]  # long forgotten: read again


def test_a_weighed_cache_holds_no_more_than_its_weight(tmp_path):
    cache = PerFile(lambda path, key: "x" * int(os.path.basename(path)), limit=1000, weigh=len)
    for size in range(1, 300):
        (tmp_path / str(size)).touch()
        cache(str(tmp_path / str(size)))
        assert cache.weight <= 1000
    assert len(cache) < 10


def test_recently_used_hands_every_entry_it_lets_go_to_dropped():
    dropped = []
    lru: RecentlyUsed[str, list[int]] = RecentlyUsed(2, dropped.append)
    one, two, three, again = [1], [2], [3], [1, 1]
    lru.put("a", one)
    lru.put("b", two)
    assert lru.get("a") is one
    lru.put("c", three)  # "b" is the least recently used
    assert dropped == [two] and list(lru) == ["a", "c"]
    lru.put("a", again)  # replaced
    lru.drop("c")
    assert dropped == [two, one, three] and list(lru) == ["a"] and lru.weight == 1


def test_a_long_run_of_distinct_scripts_stays_within_the_bound(tmp_path, monkeypatch):
    """beoserv meets script after script (`bpsh 0 sh job-N.sh`): what it keeps of them stops growing at
    the bound, however many more come."""
    monkeypatch.setattr(describe, "MAX_SCRIPT_TEXT", 64 << 10)
    monkeypatch.setattr(describe, "MAX_SHELL_TEXT", 64 << 10)  # their texts' command words
    builder = ManifestBuilder(ObjectStore())
    body = "echo step  # '" + "x" * 4000 + "'\n"  # 4 KiB a script, quick to read for its commands

    def run(first: int, count: int) -> None:
        for n in range(first, first + count):
            script = tmp_path / f"job-{n}.sh"
            script.write_text(f"# job {n}\n{body}")
            request = p.JobRequest("0", ("sh", script.name), {"PATH": "/usr/bin:/bin"}, str(tmp_path), 0, 0)
            builder._programs(request, "/usr/bin:/bin")
            script.unlink()

    run(0, 100)  # past the bound: 16 scripts' text fill it
    assert builder._scripts.weight <= 64 << 10 and len(builder._scripts) < 20
    assert builder._words.weight <= 64 << 10
    gc.collect()
    # counted: what this test's own calls allocated and still hold; a thread an earlier test left behind
    # allocates meanwhile too (3.9 MB was counted once, in a full run on a busy host)
    ours = [tracemalloc.Filter(True, __file__, all_frames=True)]
    tracemalloc.start(64)
    try:
        before = tracemalloc.take_snapshot().filter_traces(ours)
        run(100, 1000)  # 4 MiB of scripts more
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(ours)
    finally:
        tracemalloc.stop()
    grown = sum(trace.size for trace in after.traces) - sum(trace.size for trace in before.traces)
    assert builder._scripts.weight <= 64 << 10 and len(builder._scripts) < 20
    assert builder._words.weight <= 64 << 10
    assert grown < 256 << 10, f"{grown} bytes more after 1000 more scripts"
