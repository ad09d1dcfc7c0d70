import xml.etree.ElementTree as ET

from agent.protocol import Timeline, TimelineEntry
from agent.schema import Stage
from beoboot.master import timeline as tl

BOOT = Timeline(
    0,
    "52:54:00:00:00:01",
    1,
    (
        TimelineEntry(100.0, "stage1_start", Stage.BOOSTER),
        TimelineEntry(102.5, "kexec", Stage.BOOSTER),
        TimelineEntry(103.0, "stage2_start", Stage.PXE),
        TimelineEntry(103.2, "dhcp", Stage.PXE, "10.0.2.15 <lease>"),
        TimelineEntry(105.0, "download", Stage.PXE),
        TimelineEntry(109.0, "switch", Stage.PXE),
        TimelineEntry(109.5, "stage3_ready", Stage.SUPERVISOR),
    ),
)


def test_phases_run_from_one_event_to_the_next():
    phases = tl.phases(BOOT)
    assert [(ph.label, round(ph.start, 3), round(ph.duration, 3)) for ph in phases] == [
        ("stage 1", 0.0, 2.5),
        ("kexec", 2.5, 0.5),
        ("stage 2", 3.0, 0.2),
        ("stage 2 DHCP", 3.2, 1.8),
        ("download", 5.0, 4.0),
        ("switch", 9.0, 0.5),
        ("stage 3 ready", 9.5, 0.0),
    ]


def test_svg_is_well_formed_and_has_a_bar_per_phase():
    root = ET.fromstring(tl.render_svg(BOOT).encode())
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert len(root.findall(f"{ns}rect")) == 6 and len(root.findall(f"{ns}polygon")) == 1
    assert "10.0.2.15 <lease>" in "".join(root.itertext())  # escaped on the way in, intact on the way out


def test_empty_timeline_still_draws():
    empty = Timeline(3, "52:54:00:00:00:04", 0, ())
    ET.fromstring(tl.render_svg(empty).encode())
    assert "0 events" in tl.format_text(empty)


def test_text():
    text = tl.format_text(BOOT)
    assert "stage2_start" in text and "total 9.500s" in text
