"""The new parsers of the node's world, by Hypothesis: a superblock's label (stage3.disklabels) from any
bytes, what mount(2) gets (stage3.sitemounts) from any mount the master could send, and [[mounts]] in
beoserv's config from any table: an answer or the parser's own error, never anything else."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent import protocol as p
from beoboot.errors import ConfigError
from beoboot.master.config import config_from_dict
from stage3.disklabels import label_of
from stage3.sitemounts import MountError, mount_call

words = st.text(st.sampled_from("abcLABEL=:/,.-_0123456789 vers4ro\0é"), max_size=40)


@given(st.binary(max_size=2048), st.sampled_from([b"", b"XFSB", b"\x53\xef"]), st.integers(0, 2000))
def test_any_bytes_have_a_label_or_none(data, magic, where):
    data = bytearray(data.ljust(2048, b"\0"))
    data[where : where + len(magic)] = magic
    label = label_of(bytes(data))
    assert label is None or (isinstance(label, str) and 0 < len(label) <= 16)


@given(st.sampled_from(["nfs", "nfs4", "tmpfs", "ext4", "xfs", "weird"]), words, words, words)
def test_any_mount_is_a_call_or_a_mount_error(kind, source, target, options):
    def resolve(name):
        raise OSError("no resolver in this test")

    try:
        made = mount_call(
            p.NodeMount(kind, source, target, options),
            master_host="10.0.2.2",
            client_address="10.0.2.15/24",
            resolve=resolve,
            find=lambda label: None,
        )
    except MountError:
        return
    assert made.fstype in ("nfs", "nfs4", kind) and isinstance(made.flags, int)


values = st.one_of(words, st.integers(-5, 5), st.booleans(), st.lists(words, max_size=3), st.none())


@given(st.lists(st.dictionaries(st.sampled_from(["type", "source", "target", "options", "other"]), values), max_size=4))
def test_any_mounts_table_is_a_config_or_a_config_error(tables):
    raw = {"mounts": [{k: v for k, v in table.items() if v is not None} for table in tables]}
    try:
        config = config_from_dict(raw, "beoserv.toml")
    except ConfigError as exc:
        assert "beoserv.toml" in str(exc)
        return
    assert len(config.mounts) == len(tables)
