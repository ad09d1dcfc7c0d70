import pytest

from beoboot import config
from beoboot.errors import ConfigError
from beoboot.image.compress import Compression


def write(tmp_path, text):
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_embedded_default_loads_and_round_trips_through_json():
    cfg = config.load(environ={})
    assert cfg.sysroot == "/"
    assert set(cfg.images) == set(config.IMAGE_NAMES)
    assert config.Config.from_json(cfg.to_json()) == cfg


def test_site_file_overrides_one_key_and_keeps_the_rest(tmp_path):
    cfg = config.load(write(tmp_path, '[images.stage2]\ncompression = "gzip"\ndrivers = ["e1000*"]\n'), environ={})
    assert cfg.image("stage2").compression == Compression.GZIP
    assert cfg.image("stage2").drivers == ("e1000*",)
    assert cfg.image("stage1").compression == config.load(environ={}).image("stage1").compression
    assert config.Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "value, expected",
    [
        ('"lspci:site-lspci.txt"', ("lspci:site-lspci.txt",)),
        ('["lspci:/etc/beoboot/rack 1.txt", "e1000e"]', ("lspci:/etc/beoboot/rack 1.txt", "e1000e")),
        ('"all"', ("all",)),
    ],
)
def test_drivers_may_name_an_lspci_dump(tmp_path, value, expected):
    cfg = config.load(write(tmp_path, f"[images.stage2]\ndrivers = {value}\n"), environ={})
    assert cfg.image("stage2").drivers == expected
    assert config.Config.from_json(cfg.to_json()) == cfg


def test_source_date_epoch_from_environment_wins():
    assert config.load(environ={"SOURCE_DATE_EPOCH": "1234567890"}).source_date_epoch == 1234567890


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[build]\nsysroto = '/'\n", ["site.toml", "sysroto", "allowed keys", "sysroot"]),
        ("[images.stage9]\nbudget = 1\n", ["site.toml", "stage9", "stage1"]),
        ("[images.stage1]\ncompression = 'bzip3'\n", ["site.toml", "compression", "bzip3", "gzip, xz, zstd"]),
        ("[images.stage1]\nbudget = 'lots'\n", ["site.toml", "budget", "'lots'", "48M"]),
        ("[images.stage1]\ndrivers = 'some'\n", ["drivers", '"all"', '"lspci:FILE"']),
        ("[images.stage1]\ndrivers = 'lspci:'\n", ["images.stage1.drivers", "'lspci:'", "`lspci -n` dump"]),
        ('[images.stage1]\ndrivers = ["lspci:a\\tb"]\n', ["images.stage1.drivers", "lspci:FILE"]),
        ("[images.stage1]\ndrivers = [3]\n", ["images.stage1.drivers", "module names"]),
        ("[build]\nmaster_url = 'ftp://x'\n", ["master_url", "http://"]),
        ("[nonsense]\n", ["[nonsense]", "allowed sections"]),
        ("[images.stage3]\ncompression = 'zstd'\n", ["site.toml", "stage3", "gzip or none"]),
        ("[artifacts]\nfloppy_kib = 720\n", ["floppy_kib", "1440 or 2880"]),
        ("[artifacts]\niso_stage = 'stage3'\n", ["iso_stage", "stage1, stage2"]),
        ("[artifacts]\nnode_range = '10.0.2.9'\n", ["node_range", "FIRST-LAST"]),
        ("[build\n", ["not valid TOML"]),
        ("[build]\nlibcache_format = 'always'\n", ["site.toml", "libcache_format", "'always'", "blank, never"]),
        (
            "[build]\nlibcache_disk = '/dev/vdb'\nlibcache_fstype = 'xfs'\n",
            ["site.toml", "libcache_fstype = 'xfs'", "mke2fs", "ext2, ext3, ext4", 'libcache_format = "never"'],
        ),
    ],
)
def test_bad_config_names_file_key_and_what_is_allowed(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, text), environ={})
    for word in expected:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "text, disk, fstype, format_",
    [
        ("", "", "ext4", "blank"),  # the default: RAM, and blank disks formatted once one is configured
        (
            "libcache_disk = '/dev/vdb'\nlibcache_fstype = 'xfs'\nlibcache_format = 'never'\n",
            "/dev/vdb",
            "xfs",
            "never",
        ),
        ("libcache_fstype = 'xfs'\n", "", "xfs", "blank"),  # no disk: nothing to format
        ("libcache_disk = '/dev/vdb'\nlibcache_fstype = 'ext3'\n", "/dev/vdb", "ext3", "blank"),
    ],
)
def test_libcache_disk_settings(tmp_path, text, disk, fstype, format_):
    cfg = config.load(write(tmp_path, "[build]\n" + text), environ={})
    assert (cfg.libcache_disk, cfg.libcache_fstype, cfg.libcache_format) == (disk, fstype, format_)
    assert config.Config.from_json(cfg.to_json()) == cfg


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize("value, size", [(100, 100), ("512K", 512 * 1024), ("48M", 48 * 2**20), ("1G", 2**30)])
def test_sizes(value, size):
    assert config.parse_size(value) == size


def test_rendered_toml_is_a_valid_config_that_loads_back_the_same(tmp_path):
    cfg = config.load(environ={})
    again = config.load(write(tmp_path, config.render_toml(cfg)), environ={})
    assert again.to_json().replace(str(tmp_path / "site.toml"), "X") == cfg.to_json().replace(
        config.DEFAULT_CONFIG_NAME, "X"
    )
