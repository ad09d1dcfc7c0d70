"""The one contract between the nodes and the master (`beoserv`): URL paths and JSON message shapes.

Standard library only: the agent imports this inside the node images, the master imports it on the host.
Nodes open every connection; nothing listens on a node.

Time: node clocks are not trusted (a diskless node may have no synchronised clock, and kexec restarts the
monotonic clock). Every message that carries timed items sends `sent_mono`, the node's time.monotonic()
when it posted, and each item carries `mono`, the node's time.monotonic() when it happened. The master
stamps an item at `receipt time - (sent_mono - mono)`: right to within one network delay, whatever the
node's wall clock says, even for items buffered while the master was unreachable.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.schema import Stage

API = "/api/v1"
REGISTER_PATH = f"{API}/register"  # POST RegisterRequest -> RegisterReply
HEARTBEAT_PATH = f"{API}/heartbeat"  # POST Heartbeat -> HeartbeatReply
EVENTS_PATH = f"{API}/events"  # POST EventBatch -> Accepted
LOGS_PATH = f"{API}/logs"  # POST LogBatch -> Accepted
NODES_PATH = f"{API}/nodes"  # GET -> NodeList
HOSTS_PATH = f"{API}/hosts"  # GET -> text/plain, /etc/hosts lines: "ADDRESS nN .N" for every node with an address
TIMELINE_PATH = f"{API}/nodes/{{node}}/timeline"  # GET -> Timeline; node: 3, ".3", "n3" or a MAC
STATUS_PATH = f"{API}/status"  # GET -> ServerStatus
NODE_LOG_PATH = f"{API}/nodes/{{node}}/log"  # GET -> NodeLog; query source=kernel|agent, limit=N
DRIVERS_PATH = f"{API}/drivers"  # POST DriversRequest -> DriversReply: what drives devices that appeared since
BOOT_PREFIX = "/"  # GET/HEAD the builder's output tree, at the root as nginx serves it (images, kernel, manifest.json); Range, If-Range

# A node the master does not know (its registry was lost) gets 404 on heartbeat/events/logs: register again.
UNKNOWN_NODE_STATUS = 404


class NodeState(enum.StrEnum):
    BOOTING = "booting"  # registered, stage 3 not ready yet
    UP = "up"  # stage3_ready posted in this boot
    DOWN = "down"  # missed heartbeats for heartbeat_timeout seconds


class BootEvent(enum.StrEnum):
    """The stage transitions the agent posts, in boot order. Other names matching EVENT_NAME are accepted."""

    STAGE1_START = "stage1_start"
    KEXEC = "kexec"  # stage 1 is about to kexec into stage 2
    STAGE2_START = "stage2_start"
    DHCP = "dhcp"  # stage 2 starts DHCP
    DOWNLOAD = "download"  # stage 2 starts fetching the stage 3 image
    SWITCH = "switch"  # stage 2 switches root into stage 3
    STAGE3_READY = "stage3_ready"  # the node is up: the master marks it UP
    FAILED = "failed"  # the agent gave up; `detail` says why


# The master records this one itself when a node misses its heartbeats.
HEARTBEAT_LOST = "heartbeat_lost"

EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class ProtocolError(ValueError):
    """A message that does not fit its shape; the text names the field."""


def normalise_mac(text: str) -> str:
    """'52-54-00-AB-CD-EF' or '52:54:00:ab:cd:ef' -> '52:54:00:ab:cd:ef'."""
    mac = text.strip().lower().replace("-", ":")
    if not MAC.fullmatch(mac):
        raise ProtocolError(f"not a MAC address: {text!r} (expected six hex pairs, e.g. 52:54:00:12:34:56)")
    return mac


def node_name(number: int) -> str:
    """The BeoNSS name of node N: '.N' (node 0 is '.0')."""
    return f".{number}"


def node_hostname(number: int, prefix: str = "n") -> str:
    """The hostname of node N: 'nN'. A hostname may not begin with '.', so BeoNSS '.N' is an alias."""
    return f"{prefix}{number}"


# --- message shapes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PciDevice:
    slot: str  # "0000:00:03.0"
    vendor: str  # "0x8086"
    device: str  # "0x100e"
    pci_class: str  # "0x020000"
    driver: str | None = None
    modalias: str = ""  # "pci:v00008086d0000100Esv...": what modules.alias patterns match (agent.hwprobe)


@dataclass(frozen=True)
class BusDevice:
    """A device on the virtio bus (its PCI function is virtio_pci's: virtio_blk, virtio_net... bind it), or
    on the SCSI bus (a SATA disk behind ahci: sd_mod binds it)."""

    name: str  # "virtio0", "0:0:0:0"
    modalias: str  # "virtio:d00000002v00001AF4", "scsi:t-0x00"
    driver: str | None = None


@dataclass(frozen=True)
class Disk:
    name: str  # "vda"
    size_bytes: int
    model: str | None = None


@dataclass(frozen=True)
class Hardware:
    cpu_model: str = ""
    cpus: int = 0
    memory_kib: int = 0
    pci: tuple[PciDevice, ...] = ()
    disks: tuple[Disk, ...] = ()
    virtio: tuple[BusDevice, ...] = ()
    modules: tuple[str, ...] = ()  # loaded, as /proc/modules names them: what the master need not send
    scsi: tuple[BusDevice, ...] = ()

    def unbound(self) -> list[tuple[str, str]]:
        """(device, modalias) of the devices that no driver has bound."""
        devices = [(d.slot, d.modalias, d.driver) for d in self.pci]
        devices += [(d.name, d.modalias, d.driver) for d in (*self.virtio, *self.scsi)]
        return [(name, alias) for name, alias, driver in devices if alias and not driver]


@dataclass(frozen=True)
class DriverModule:
    """A kernel module the master sends a node for its hardware (beoboot.master.hwdrivers), in load order:
    `module` is the .ko (its path names the file on the master), `firmware` the files it may ask the
    kernel for, each with its path under /lib/firmware."""

    name: str
    module: JobFile
    firmware: tuple[JobFile, ...] = ()
    compressed: bool = False  # a .ko.xz/.ko.zst the kernel decompresses itself (finit_module flag)
    device: str = ""  # the device (PCI slot or virtio name) it was sent for, for the node's log


@dataclass(frozen=True)
class Booted:
    """What a node runs, as the node knows it: the master tells from it whether the node's next boot would
    change after a rebuild (bpstat). A stage-2 ramdisk PXE loaded is in no list: nothing checked it."""

    kernel: str = ""  # the running kernel's release (uname -r)
    # image name -> the sha256 this boot checked it against: stage3 (stage 2 fetched and unpacked it) and
    # envroot (the pin stage 3 fetches it by: it takes no other)
    images: dict[str, str] = field(default_factory=dict)


MAX_BOOTED_IMAGES = 16
KERNEL_RELEASE = re.compile(r"[0-9A-Za-z._+~-]{1,64}")  # what uname -r prints


def check_booted(booted: Booted, where: str = "booted") -> Booted:
    """A node's Booted as the master stores and shows it: a kernel release, image names, sha256 hashes."""
    if booted.kernel and not KERNEL_RELEASE.fullmatch(booted.kernel):
        raise ProtocolError(f"{where}.kernel: {_shorten(repr(booted.kernel))} is not a kernel release (uname -r)")
    if len(booted.images) > MAX_BOOTED_IMAGES:
        raise ProtocolError(f"{where}.images: {len(booted.images)} images, more than {MAX_BOOTED_IMAGES}")
    for name, digest in booted.images.items():
        if not EVENT_NAME.fullmatch(name) or not SHA256_HEX.fullmatch(digest):
            raise ProtocolError(
                f"{where}.images[{_shorten(repr(name))}]: an image name (a-z, 0-9, _) and a sha256 in hex expected"
            )
    return booted


@dataclass(frozen=True)
class RegisterRequest:
    mac: str
    stage: Stage
    hardware: Hardware = field(default_factory=Hardware)
    agent_version: str = ""
    address: str | None = None  # the node's IPv4 address, once it has one: how other nodes reach it by name
    booted: Booted = field(default_factory=Booted)  # what this boot runs; a node from before it sends none
    # /proc/sys/kernel/random/boot_id: the same for stage 2 and 3 and for a registration again of the same
    # boot (after the master lost its registry), new at every kernel boot; the master's node-up hook runs
    # once per boot by it (beoboot.master.nodehooks)
    boot_id: str = ""


@dataclass(frozen=True)
class NodeMount:
    """A file system the node mounts into its environment root before it takes jobs ([[mounts]] in
    beoserv's config; stage3.sitemounts carries it out)."""

    type: str  # "nfs", "tmpfs", or a local file system type ("ext4", "xfs")
    source: str  # "master:/home", "server:/export", "LABEL=scratch", "tmpfs"
    target: str  # absolute, inside the environment root
    options: str = ""  # mount options as mount(8) takes them: "vers=4.2", "size=1g,ro"


# The event a node posts for each of its mounts that failed: detail "TARGET: why" (bpstat shows them).
MOUNT_FAILED = "mount_failed"


@dataclass(frozen=True)
class RegisterReply:
    number: int  # assigned in order on first registration, kept for ever
    name: str  # BeoNSS name ".N"
    hostname: str  # "nN"
    address: str | None  # first_node_address + N, or None when the master has no address plan
    boot: int  # how many boots the master has seen for this node (1 on the first)
    heartbeat_interval: float  # seconds between heartbeats
    heartbeat_timeout: float  # the master marks the node down after this long without one
    # the job link's credential (LINK_TOKEN_HEADER), new at every registration: only the machine that
    # registered last as this node gets its jobs, not whoever knows its MAC
    link_token: str = ""
    # the master's own host name, which nodes then resolve to the master: launchers on the master give it
    # to what they start on nodes to call back (Hydra's `--control-port vm:PORT`)
    master_hostname: str = ""
    # the master's wall time as it answered (agent.clocksync: the node sets its clock by it; 0: not sent)
    master_time: float = 0.0
    max_clock_drift: float = 0.5  # seconds the node's clock may drift from the master's before it is set again
    mounts: tuple[NodeMount, ...] = ()  # what the node mounts into its environment root before it takes jobs
    # name servers and search domains for the node's resolv.conf; none: those of its DHCP lease
    dns_servers: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    # the modules (with their dependencies before them) that drive the node's devices it had no driver for
    drivers: tuple[DriverModule, ...] = ()


@dataclass(frozen=True)
class DriversRequest:
    """After loading drivers, new devices may appear (a SATA controller's disks): the node asks again."""

    mac: str
    hardware: Hardware


@dataclass(frozen=True)
class DriversReply:
    drivers: tuple[DriverModule, ...] = ()


@dataclass(frozen=True)
class Load:
    """How busy a node is, as its kernel says (/proc/loadavg, /proc/meminfo): what Scyld's beostat showed,
    for choosing nodes for the next job."""

    load1: float  # run queue, averaged over one minute
    mem_total_kib: int
    mem_available_kib: int


@dataclass(frozen=True)
class Heartbeat:
    mac: str
    stage: Stage
    uptime: float | None = None  # /proc/uptime of the node, seconds
    address: str | None = None  # as in RegisterRequest: changes when a new DHCP lease moves the node
    load: Load | None = None
    # seconds the master's clock was ahead of the node's at the last reply (agent.clocksync), and what is
    # left of it after the node set its clock; None: not measured yet
    clock_offset: float | None = None
    clock_residual: float | None = None
    hardware: Hardware | None = None  # once the drivers the master sent are loaded: what is bound now


@dataclass(frozen=True)
class HeartbeatReply:
    number: int
    state: NodeState
    heartbeat_interval: float
    # changes when the cluster's host table (HOSTS_PATH) does: a node fetches it again only then
    hosts_version: int = 0
    master_time: float = 0.0  # as in RegisterReply: the node checks its clock's drift by it


@dataclass(frozen=True)
class StageEvent:
    name: str  # a BootEvent value, or any name matching EVENT_NAME
    mono: float  # node time.monotonic() when it happened
    stage: Stage
    detail: str = ""


@dataclass(frozen=True)
class EventBatch:
    mac: str
    sent_mono: float
    events: tuple[StageEvent, ...]


@dataclass(frozen=True)
class LogLine:
    mono: float
    stage: Stage
    level: str  # "INFO", "WARNING", ...
    message: str
    source: str = "agent"  # LOG_SOURCES: the agent's own line, or a record of the kernel's (/dev/kmsg)
    kernel_time: float | None = None  # a kernel record's own time stamp: seconds since its kernel booted


LOG_SOURCES = ("agent", "kernel")


@dataclass(frozen=True)
class LogBatch:
    mac: str
    sent_mono: float
    lines: tuple[LogLine, ...]
    dropped: int = 0  # lines the node threw away because its buffer was full


@dataclass(frozen=True)
class Accepted:
    accepted: int


@dataclass(frozen=True)
class NodeRow:
    number: int
    mac: str
    name: str
    hostname: str
    address: str | None
    state: NodeState
    stage: Stage
    boot: int
    last_seen: float  # master wall-clock time (epoch seconds)
    uptime: float | None  # node uptime as of the master's reply time, when the node reported one
    hardware: Hardware = field(default_factory=Hardware)
    load: Load | None = None  # as of the node's last heartbeat
    agent_version: str = ""  # as its last registration said
    booted: Booted = field(default_factory=Booted)  # as its last registration said
    # what the node's next boot would change: the names (kernel, stage3, envroot) whose published build
    # differs from what it booted; () none; None: not known (it reported nothing to compare)
    next_boot_changes: tuple[str, ...] | None = None
    # the node's clock, seconds behind the master's, as it last measured (Heartbeat.clock_offset), and what
    # was left after it set its clock then: what bpstat shows
    clock_offset: float | None = None
    clock_residual: float | None = None
    # the mounts ([[mounts]]) that failed in this boot, "TARGET: why", as the node's MOUNT_FAILED events said
    mount_failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeList:
    server_time: float
    nodes: tuple[NodeRow, ...]


@dataclass(frozen=True)
class TimelineEntry:
    t: float  # master wall-clock time (epoch seconds)
    event: str
    stage: Stage
    detail: str = ""


@dataclass(frozen=True)
class Timeline:
    number: int
    mac: str
    boot: int
    entries: tuple[TimelineEntry, ...]


@dataclass(frozen=True)
class NodeLogEntry:
    t: float  # master wall-clock time (epoch seconds)
    stage: Stage
    level: str
    message: str
    source: str = "agent"
    kernel_time: float | None = None


@dataclass(frozen=True)
class NodeLog:
    number: int
    entries: tuple[NodeLogEntry, ...]


@dataclass(frozen=True)
class ServerStatus:
    pid: int
    uptime: float
    nodes: int
    states: dict[str, int]  # NodeState value -> count
    open_fds: int
    rss_kib: int
    requests: int
    config_loads: int
    # big transfers (beoboot.master.transfers): sending now, waiting for a slot, told to retry since start
    transfers_active: int = 0
    transfers_waiting: int = 0
    transfers_refused: int = 0
    # over the last 10 s (beoboot.master.rates): requests answered, and bytes of the answers, per second
    requests_per_s: float = 0.0
    bytes_per_s: float = 0.0
    log_lines_dropped: int = 0  # nodes' log lines not stored: the registry could not be written for long


# --- JSON round trip -------------------------------------------------------------------------------------

T = TypeVar("T")


def to_json(message: Any) -> str:
    """A message as JSON, keys sorted. The dataclasses are walked by json's C encoder (_frame_fields), not
    dataclasses.asdict, which deep-copies every value first: a third of the time of a node's heartbeat."""
    if not hasattr(type(message), "__dataclass_fields__"):
        raise TypeError(f"not a message: {message!r}")
    return json.dumps(message, default=_frame_fields, sort_keys=True)


# What a message may hold. A peer's message must cost its reader bounded time and memory whatever it
# holds, and must carry only values the registry can store: json.loads alone recurses once per nesting
# level, turns a 4,000-digit number into an int (quadratic work), and accepts NaN and Infinity.
MAX_MESSAGE_BYTES = 16 << 20  # a job manifest of some 50,000 files; node messages are far smaller
MAX_DEPTH = 16  # nesting levels; the deepest message (JobStart.manifest.files[i]) has 4
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # SQLite's INTEGER
MAX_NUMBER_CHARS = 64  # a float written with more characters than this carries no more precision
_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the byte it escapes
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')  # what bytes.translate drops
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_TOO_DEEP = b"[" * (MAX_DEPTH + 1)


class _Refused:
    """A number json.loads met that no message may hold (NaN, Infinity, a 300-digit integer). It is
    decoded as this, not refused at once, so that the error names the field that held it."""

    def __init__(self, complaint: str) -> None:
        self.complaint = complaint

    def __repr__(self) -> str:
        return self.complaint


def _int(text: str) -> int | _Refused:
    # length first: int() of a long digit string is the CPU sink being avoided
    value = int(text) if len(text) <= 20 else None
    if value is None or not INT_MIN <= value <= INT_MAX:
        return _Refused(f"an integer of {len(text.lstrip('-'))} digits, beyond 64 bits")
    return value


def _float_literal(text: str) -> float | _Refused:
    if len(text) > MAX_NUMBER_CHARS:
        return _Refused(f"a number written with {len(text)} characters")
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"{_shorten(text)}, beyond a float's range")


def _constant(text: str) -> _Refused:
    return _Refused(f"{text}, not a number JSON allows")


def _loads(text: str | bytes, what: str) -> Any:
    """Decoded JSON within the bounds above, or ProtocolError naming `what`."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{what}: {len(text)} bytes, more than the {MAX_MESSAGE_BYTES} a message may have")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    _check_depth(text, what)
    try:
        return json.loads(text, parse_int=_int, parse_float=_float_literal, parse_constant=_constant)
    except RecursionError:  # not reached past _check_depth; kept so that no input can crash the reader
        raise ProtocolError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise ProtocolError(f"{what}: not JSON: {exc}") from None


def _check_depth(text: str, what: str) -> None:
    """Nesting deeper than MAX_DEPTH is refused before json.loads recurses into it. Escapes dropped, then
    everything but quotes and brackets, then what lies between quotes: the brackets left (both kinds as
    one: json.loads refuses a mismatch) lose their innermost pairs once per level. Each step is a C loop
    over the text, not a Python step per character."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    structure = text.encode("utf-8", "surrogatepass")
    if b"\\" in structure:
        structure = _ESCAPE.sub(b"", structure)
    brackets = b"".join(structure.translate(_ONE_KIND, _NOT_STRUCTURE).split(b'"')[::2])
    if _TOO_DEEP not in brackets:  # the plain attack, found in one search
        for _ in range(MAX_DEPTH):
            brackets = brackets.replace(b"[]", b"")
            if not brackets:
                return
    raise ProtocolError(f"{what}: nested deeper than {MAX_DEPTH} levels, or brackets that do not pair")


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _shown(value: Any) -> str:
    """A decoded value in an error message: its kind and a bounded repr, as the message may be a megabyte."""
    if type(value) is _Refused:
        return value.complaint
    return f"{type(value).__name__} {_shorten(repr(value))}"


def from_json(cls: type[T], text: str | bytes) -> T:
    return from_dict(cls, _loads(text, cls.__name__))


def from_dict(cls: type[T], raw: Any, where: str = "") -> T:
    """Build dataclass `cls` from decoded JSON, checking every field's type; errors name the field."""
    try:
        return _converter(cls)(raw)  # type: ignore[arg-type]  # a dataclass type is hashable; typeshed's T is not
    except _Mismatch as exc:
        raise ProtocolError(f"{where or cls.__name__}{exc.path}: {exc.complaint}") from None


class _Mismatch(Exception):
    """A value that does not fit its type. `path` grows (".field", "[2]") as it unwinds to from_dict, so
    the happy path builds no location strings: a job manifest is decoded on every job."""

    def __init__(self, complaint: str) -> None:
        self.complaint = complaint
        self.path = ""

    def within(self, step: str) -> _Mismatch:
        self.path = step + self.path
        return self


@functools.cache
def _converter(hint: Any) -> typing.Callable[[Any], Any]:
    """A function that checks and converts decoded JSON into `hint`, built once per type: the type
    inspection is done here, not for every value."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        (inner,) = [o for o in options if o is not type(None)]
        return _optional(_converter(inner)) if type(None) in options else _converter(inner)
    if origin is tuple:
        return _tuple_of(_converter(typing.get_args(hint)[0]))
    if origin is dict:
        key, val = typing.get_args(hint)
        return _dict_of(_converter(key), _converter(val))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_converter(hint)
    if hint is Stage:  # a node is only ever in a stage that runs the agent
        return _enum_converter(hint, Stage.with_agent())
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_converter(hint, tuple(hint))
    if hint is float:
        return _float
    if hint is str:
        return _string
    if hint in (int, bool):
        return _exactly(hint)
    raise TypeError(f"no JSON conversion for {hint!r}")


def _optional(inner: typing.Callable[[Any], Any]) -> typing.Callable[[Any], Any]:
    return lambda value: None if value is None else inner(value)


def _tuple_of(item: typing.Callable[[Any], Any]) -> typing.Callable[[Any], Any]:
    def convert(value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _Mismatch(f"expected a list, got {_shown(value)}")
        try:
            return tuple(map(item, value))
        except _Mismatch as exc:
            index = next(i for i, v in enumerate(value) if not _fits(item, v))
            raise exc.within(f"[{index}]") from None

    return convert


def _dict_of(key: typing.Callable[[Any], Any], val: typing.Callable[[Any], Any]) -> typing.Callable[[Any], Any]:
    def convert(value: Any) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _Mismatch(f"expected an object, got {_shown(value)}")
        converted = {}
        for k, v in value.items():
            try:
                converted[key(k)] = val(v)
            except _Mismatch as exc:
                raise exc.within(f"[{_shorten(repr(k))}]") from None
        return converted

    return convert


def _fits(convert: typing.Callable[[Any], Any], value: Any) -> bool:
    try:
        convert(value)
    except _Mismatch:
        return False
    return True


def _dataclass_converter(cls: type) -> typing.Callable[[Any], Any]:
    hints = typing.get_type_hints(cls)  # evaluates every annotation's text: once per class
    fields = tuple(
        (f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
    )
    names = frozenset(name for name, _ in fields)
    converters: dict[str, typing.Callable[[Any], Any]] = {}

    def convert(raw: Any) -> Any:
        if type(raw) is not dict:
            raise _Mismatch(f"expected an object, got {_shown(raw)}")
        if not names.issuperset(raw):
            raise _Mismatch(_shorten(f"unknown fields {sorted(set(raw) - names)}", 200))
        if not converters:  # resolved at first use: a field's type may be the class itself, or later in the module
            # built whole, then added in one step (dict.update of a dict holds the GIL): another thread that
            # sees converters non-empty must find every field in it
            built = {name: _converter(hints[name]) for name, _ in fields}
            converters.update(built)
        values = {}
        for name, required in fields:
            if name in raw:
                try:
                    values[name] = converters[name](raw[name])
                except _Mismatch as exc:
                    raise exc.within(f".{name}") from None
            elif required:
                raise _Mismatch(f"missing field {name!r}")
        return cls(**values)

    return convert


def _enum_converter(cls: type[enum.Enum], members: tuple[enum.Enum, ...]) -> typing.Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        try:
            member = cls(value)
        except (ValueError, TypeError):  # TypeError: an unhashable value (a list)
            member = None
        if member in members:
            return member
        allowed = ", ".join(str(m.value) for m in members)
        shown = value.complaint if type(value) is _Refused else _shorten(repr(value))
        raise _Mismatch(f"{shown} is not one of {allowed}")

    return convert


def _float(value: Any) -> float:
    # bool is an int; JSON has no separate integer type for floats, so ints are fine here
    if type(value) in (int, float):
        return float(value)
    raise _Mismatch(f"expected float, got {_shown(value)}")


def _exactly(kind: type) -> typing.Callable[[Any], Any]:
    # type(), not isinstance: bool is an int, and JSON gives plain ints, strs and bools
    def convert(value: Any) -> Any:
        if type(value) is kind:
            return value
        raise _Mismatch(f"expected {kind.__name__}, got {_shown(value)}")

    return convert


def _string(value: Any) -> str:
    if type(value) is not str:
        raise _Mismatch(f"expected str, got {_shown(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # "\ud800" decodes to a lone surrogate, which no file or database takes
            raise _Mismatch(f"{_shorten(repr(value))} is not valid Unicode (a lone surrogate)") from None
    return value


def check_event_name(name: str) -> str:
    if not EVENT_NAME.fullmatch(name):
        raise ProtocolError(
            f"event name {name!r} is not allowed (lower-case letters, digits, '_', at most 40)",
            # so the timeline stays printable and the SVG needs no escaping of names
        )
    return name


# --- jobs: libcache objects and remote execution ---------------------------------------------------------
#
# The node keeps one WebSocket open to the master (JOBS_LINK_PATH, opened by the node: nodes listen on
# nothing); `bpsh` talks to beoserv on a local socket (beoboot.master.bpsh.localjobs). Control messages are text frames holding one JSON Frame;
# job input and output are binary frames: IO_HEADER (stream, job id) followed by the bytes. An empty stdin
# frame is end of input.

JOBS_LINK_PATH = f"{API}/jobs/link"  # GET WebSocket; query mac=...; the node's end of every job
LINK_TOKEN_HEADER = (
    "X-Beoboot-Link-Token"  # RegisterReply.link_token: on the job link, objects, heartbeats, events, logs
)
JOBS_PATH = f"{API}/jobs"  # GET -> JobList
OBJECTS_PATH = "/objects/sha256/{digest}"  # GET a libcache object by the sha256 of its content
# POST ObjectBatch: many small objects in one answer, their bytes one after another in the order asked (the
# node knows each one's size from its manifest). A cold job's dozen locale and terminfo files would
# otherwise be a dozen requests from each of a thousand nodes
OBJECTS_BATCH_PATH = "/objects/sha256"
BATCH_OBJECT_MAX = 256 << 10  # bytes: an object this small may come in a batch (python3's modules)
BATCH_BYTES_MAX = 1 << 20  # bytes of objects in one batch
BATCH_COUNT_MAX = 1024  # objects in one batch

IO_HEADER = "!BI"  # struct format: stream number, job id (stdin, master -> node)
IO_HEADER_SIZE = 5  # struct.calcsize(IO_HEADER), without importing struct here
# output, node -> master: stream number, job id, and the offset of the chunk's first byte in that stream of
# that job. The offsets make output exactly-once across a lost link or a master restart: the master drops
# what it has (a resent chunk) and asks again from where a gap begins (JobResume)
OUTPUT_HEADER = "!BIQ"
OUTPUT_HEADER_SIZE = 13
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class Stream(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2


class JobState(enum.StrEnum):
    STARTING = "starting"  # manifest sent; the node is fetching objects
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"  # the node could not start it (fetch, exec); `error` says why


@dataclass(frozen=True)
class JobFile:
    """One path the job needs in the environment root: a regular file (sha256 of its content), a symlink
    (`link`), or a directory (neither)."""

    path: str  # absolute, inside the environment root
    mode: int  # permission bits (st_mode & 0o7777)
    sha256: str = ""  # regular files
    size: int = 0
    link: str = ""  # symlinks: the target as stored
    uid: int = 0  # owner and group on the master, which the node gives it too (files and directories)
    gid: int = 0
    acl: str = ""  # its POSIX ACL on the master, if it has one: the system.posix_acl_access value, in hex


@dataclass(frozen=True)
class JobManifest:
    argv: tuple[str, ...]
    executable: str  # absolute path of argv[0] as the master resolved it
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    files: tuple[JobFile, ...]
    groups: tuple[int, ...] = ()  # supplementary groups, as bpsh had them
    # the user's names (BeoNSS): their /etc/passwd line, and an /etc/group line per group the job has
    passwd_entry: str = ""
    group_entries: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobRequest:
    """bpsh -> master: what to run where. `nodes` is a node set as typed ('0,3', 'n[0-7]', '@up'), resolved
    by the master (beoboot.master.selection), less the nodes of `exclude` (bpsh -x)."""

    nodes: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    cache: tuple[str, ...] = ()  # extra files or directories to bring (--cache)
    stdin: bool = True  # forward bpsh's stdin (False: the job reads end of file at once)
    groups: tuple[int, ...] = ()  # supplementary groups of the bpsh process (SO_PEERGROUPS)
    exclude: str = ""  # a node set (bpsh -x)
    fanout: int = 0  # jobs running at once; the next node's starts as one ends (0: every node at once)
    timeout: float = 0.0  # seconds each node's job may run before it is killed (0: no limit)
    # the bpsh process (SO_PEERCRED; 0: unknown): an MPI daemon's job brings what its launcher, the
    # process that ran bpsh, will have it run (beoboot.master.manifest.launchers)
    client_pid: int = 0


@dataclass(frozen=True)
class ObjectBatch:
    """node -> master (OBJECTS_BATCH_PATH): the sha256 of each small object wanted."""

    sha256: tuple[str, ...]


@dataclass(frozen=True)
class JobStart:
    """master -> node."""

    job: int
    manifest: JobManifest


@dataclass(frozen=True)
class JobStarted:
    """node -> master -> bpsh: the objects are cached, the job runs as `pid` on node `node`."""

    job: int
    pid: int
    node: int = -1
    fetched: int = 0  # objects the node had to fetch for this job


@dataclass(frozen=True)
class JobExit:
    """node -> master -> bpsh. `status` is a shell's $?: the exit code, or 128+N for signal N."""

    job: int
    status: int
    signal: int = 0
    node: int = -1
    error: str = ""  # set when the job never ran (status 127) or the node was lost (status 255)


@dataclass(frozen=True)
class JobSignal:
    """bpsh -> master -> node: send `signum` to the job's process group; job 0 means every job of the bpsh."""

    job: int
    signum: int


@dataclass(frozen=True)
class JobFlow:
    """master -> node: stop sending the job's output (flowing False: its bpsh reads slower than the job
    writes), or go on. The job then blocks on its full pipe, and the node's other jobs are not held up, as
    they would be if the master stopped reading the node's link."""

    job: int
    flowing: bool


@dataclass(frozen=True)
class JobAck:
    """master -> node: the job's output up to these offsets (per stream) reached its bpsh, so the node may
    forget it; with `exit`, the exit status did too, and the node forgets the job. Cumulative: one ack
    stands for every earlier one, so the master sends few (every ACK_EVERY bytes, and at the exit)."""

    job: int
    stdout: int
    stderr: int
    exit: bool = False


@dataclass(frozen=True)
class JobResume:
    """master -> node: send the job's output from these offsets on, then its exit if it ended. Sent for
    each job the node reports on a new link (JobHeld), and again from the first missing byte when the
    master sees a gap. Output before the offsets is acknowledged by it (as JobAck)."""

    job: int
    stdout: int
    stderr: int


@dataclass(frozen=True)
class JobHeld:
    """One job a node still holds when its link opens: running, or ended with its exit not acknowledged.
    `stdout` and `stderr` are the offsets its output has reached (what it read from the job's pipes)."""

    job: int
    pid: int
    stdout: int
    stderr: int
    ended: bool = False
    uid: int = -1  # whose job it is, and its command: a master whose record of it was lost can take it back
    command: str = ""


@dataclass(frozen=True)
class JobReport:
    """node -> master, the first frame on every job link: the jobs the node holds. The master takes them
    back (JobResume), or hangs up those it has no record of (JobSignal SIGHUP, then JobResume)."""

    jobs: tuple[JobHeld, ...] = ()


class PowerAction(enum.StrEnum):
    REBOOT = "reboot"  # the node boots again, from the network
    HALT = "halt"  # the CPUs stop; the machine stays powered
    POWEROFF = "poweroff"


@dataclass(frozen=True)
class NodePower:
    """master -> node (bpctl): end every job (SIGTERM, then SIGKILL after `grace` seconds), close the job
    link, then `action`. The master takes the closed link as the node's answer."""

    action: PowerAction
    grace: float = 10.0
    by: str = ""  # who asked, for the node's log


@dataclass(frozen=True)
class JobRow:
    job: int
    node: int
    pid: int
    command: str
    state: JobState
    started: float  # master wall-clock time
    status: int | None = None


@dataclass(frozen=True)
class JobList:
    jobs: tuple[JobRow, ...]


FRAME_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        JobRequest,
        JobStart,
        JobStarted,
        JobExit,
        JobSignal,
        JobFlow,
        JobAck,
        JobResume,
        JobReport,
        NodePower,
    )
}


def encode_frame(message: Any) -> str:
    """A control message as the text of one WebSocket frame: {"type": class name, "body": fields}."""
    return json.dumps({"type": type(message).__name__, "body": message}, default=_frame_fields)


_JOB_START_HEAD = '{"type": "JobStart", "body": {"job": '  # how encode_frame begins a JobStart


def job_start_frames(manifest: JobManifest) -> typing.Callable[[int], str]:
    """encode_frame(JobStart(job, manifest)) for any job id, with the manifest encoded once: a fan-out to
    a thousand nodes sends one manifest a thousand times."""
    head = _JOB_START_HEAD
    sample = encode_frame(JobStart(0, manifest))
    if not sample.startswith(head + "0, "):
        raise AssertionError(f"JobStart is not encoded as {head!r}...: {sample[:60]!r}")
    tail = sample[len(head) + 1 :]
    return lambda job: f"{head}{int(job)}{tail}"


def _frame_fields(value: Any) -> dict[str, Any]:
    """json's hook for what it cannot encode itself: a frame's dataclasses, as their fields. json's C
    encoder walks the rest (tuples, dicts, str and int enums), with none of dataclasses.asdict's deep
    copying: a job manifest is encoded on every job."""
    if hasattr(type(value), "__dataclass_fields__"):
        return vars(value)
    raise TypeError(f"a job frame cannot hold {type(value).__name__}: {value!r}")


def decode_frame(text: str | bytes) -> Any:
    if isinstance(text, bytes):  # as a WebSocket text frame reaches the node: the JobStart cache keys on str
        if len(text) > MAX_MESSAGE_BYTES:
            return _decode_any_frame(text)  # the size's error, before any decoding
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"job frame: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if text.startswith(_JOB_START_HEAD):
        digits, comma, tail = text[len(_JOB_START_HEAD) :].partition(", ")
        if comma and digits.isascii() and digits.isdigit() and len(digits) <= 15 and digits[:1] != "0":
            start = _job_start_of(tail)
            if start is not None:
                return dataclasses.replace(start, job=int(digits))
    return _decode_any_frame(text)


@functools.lru_cache(maxsize=8)
def _job_start_of(tail: str) -> JobStart | None:
    """The JobStart of a frame as job_start_frames writes it, job 0: its manifest decoded once however
    many jobs it comes with (a warm fan-out sends a node the same manifest again and again). None when the
    text says something else once whole (a later "type" or "job" key): the frame is decoded as it is."""
    start = _decode_any_frame(f"{_JOB_START_HEAD}0, {tail}")
    return start if isinstance(start, JobStart) and start.job == 0 else None


def _decode_any_frame(text: str | bytes) -> Any:
    raw = _loads(text, "job frame")
    try:
        cls = FRAME_TYPES[raw["type"]]
        body = raw["body"]
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"not a job frame ({exc}): {_shorten(str(text), 80)!r}") from None
    return from_dict(cls, body)


def shell_status(wait_status: int) -> tuple[int, int]:
    """os.waitpid status -> (shell-style status, signal number or 0): exit code, or 128+N for signal N."""
    import os

    if os.WIFSIGNALED(wait_status):
        signum = os.WTERMSIG(wait_status)
        return 128 + signum, signum
    return os.waitstatus_to_exitcode(wait_status), 0
