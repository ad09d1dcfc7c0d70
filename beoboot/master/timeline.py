"""A node's boot as phases: text for the console and a waterfall SVG.

Each event starts a phase that lasts until the next event (stage1_start .. kexec is "stage 1", kexec ..
stage2_start is the kexec itself, and so on); the last event is a milestone with no length. So any
sequence of event names draws, including ones the agent adds later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from agent.protocol import BootEvent, Timeline
from beoboot import stages
from beoboot.master.printable import printable

# Labels for the standard events; others are shown by name.
PHASE_LABELS = {
    BootEvent.STAGE1_START: "stage 1",
    BootEvent.KEXEC: "kexec",
    BootEvent.STAGE2_START: "stage 2",
    BootEvent.DHCP: "stage 2 DHCP",
    BootEvent.DOWNLOAD: "download",
    BootEvent.SWITCH: "switch",
    BootEvent.STAGE3_READY: "stage 3 ready",
}


@dataclass(frozen=True)
class Phase:
    label: str
    event: str
    stage: str
    start: float  # seconds since the first event
    duration: float  # 0 for the last event
    detail: str


def phases(timeline: Timeline) -> list[Phase]:
    entries = sorted(timeline.entries, key=lambda e: e.t)
    if not entries:
        return []
    t0 = entries[0].t
    out = []
    for i, entry in enumerate(entries):
        end = entries[i + 1].t if i + 1 < len(entries) else entry.t
        label = PHASE_LABELS.get(entry.event, entry.event.replace("_", " "))  # type: ignore[call-overload]
        # the node wrote the detail: on a terminal it must not move the cursor or forge a line
        out.append(Phase(label, entry.event, str(entry.stage), entry.t - t0, end - entry.t, printable(entry.detail)))
    return out


def format_text(timeline: Timeline) -> str:
    rows = phases(timeline)
    head = f"node {timeline.number} ({timeline.mac}) boot {timeline.boot}: {len(rows)} events"
    if not rows:
        return head + "\n"
    lines = [head, f"{'at':>9}  {'took':>8}  {'stage':6}  event"]
    for ph in rows:
        took = f"{ph.duration:7.3f}s" if ph.duration or ph is not rows[-1] else "       -"
        detail = f"  ({ph.detail})" if ph.detail else ""
        lines.append(f"{ph.start:8.3f}s  {took}  {ph.stage:6}  {ph.event}{detail}")
    lines.append(f"total {rows[-1].start:.3f}s")
    return "\n".join(lines) + "\n"


def render_svg(timeline: Timeline, *, width: int = 800, row_height: int = 22) -> str:
    """A waterfall: one row per phase, bars placed on a shared time axis, labels at the left."""
    rows = phases(timeline)
    colours = stages.colours()
    label_w, pad, axis_h = 150, 10, 30
    total = max((ph.start + ph.duration for ph in rows), default=0.0) or 1.0
    plot_w = width - label_w - 2 * pad
    scale = plot_w / total
    height = axis_h + pad * 2 + row_height * max(len(rows), 1)
    title = f"node {timeline.number} ({timeline.mac}) boot {timeline.boot}"
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="{pad}" y="{pad + 12}" font-weight="bold">{escape(title)}: {total:.2f}s</text>',
    ]
    for tick in _ticks(total):
        x = label_w + pad + tick * scale
        out.append(f'<line x1="{x:.1f}" y1="{axis_h}" x2="{x:.1f}" y2="{height - pad}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_h - 4}" text-anchor="middle" fill="#666">{tick:g}s</text>')
    for i, ph in enumerate(rows):
        y = axis_h + pad + i * row_height
        x = label_w + pad + ph.start * scale
        colour = colours.get(ph.stage, "#999")
        tip = f"{ph.label}: +{ph.start:.3f}s, {ph.duration:.3f}s" + (f" ({ph.detail})" if ph.detail else "")
        out.append(f'<text x="{pad}" y="{y + row_height * 0.7:.1f}">{escape(ph.label)}</text>')
        if ph.duration > 0:
            w = max(ph.duration * scale, 1.0)
            out.append(
                f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_height - 6}" fill="{colour}">'
                f"<title>{escape(tip)}</title></rect>"
            )
        else:  # a milestone: a diamond
            cy = y + row_height / 2
            pts = f"{x:.1f},{cy - 7:.1f} {x + 7:.1f},{cy:.1f} {x:.1f},{cy + 7:.1f} {x - 7:.1f},{cy:.1f}"
            out.append(f'<polygon points={quoteattr(pts)} fill="{colour}"><title>{escape(tip)}</title></polygon>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _ticks(total: float) -> list[float]:
    """About five round tick marks (1, 2 or 5 times a power of ten) from 0 to total."""
    raw = total / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), raw)
    count = int(total / step) + 1
    return [round(i * step, 6) for i in range(count)]
