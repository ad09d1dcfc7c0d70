"""`OUTDIR/manifest.json`: every artifact (kind, path, size, sha256) and, for every file in every image,
its source and why it is there. `inspect` and `why` read it back."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from beoboot.errors import BeobootError
from beoboot.image.filelist import Entry, FileList, Kind
from beoboot.resolve.sysroot import Sysroot
from beoboot.stages import PROJECT_ROOT

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Artifact:
    kind: str  # "image", "kernel"
    name: str
    path: str  # relative to OUTDIR
    size: int
    sha256: str
    compression: str | None = None


@dataclass(frozen=True)
class FileRecord:
    path: str
    kind: str
    mode: str
    size: int
    source: str  # sysroot path, "beoboot:<project path>" or "generated"
    reason: str
    cause: str | None = None
    target: str | None = None


@dataclass
class Manifest:
    beoboot_version: str
    kernel_version: str
    source_date_epoch: int
    artifacts: list[Artifact] = field(default_factory=list)
    images: dict[str, list[FileRecord]] = field(default_factory=dict)
    inputs_key: str = ""
    inputs: list[str] = field(default_factory=list)  # build-host paths read, for the rebuild cache
    # image -> firmware its modules ask for that the sysroot lacks: {"module", "name", "package"}
    missing_firmware: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        raw["artifacts"] = [Artifact(**a) for a in raw["artifacts"]]
        raw["images"] = {name: [FileRecord(**f) for f in files] for name, files in raw["images"].items()}
        return cls(**raw)

    def artifact(self, name: str) -> Artifact:
        for art in self.artifacts:
            if art.name == name:
                return art
        raise KeyError(name)


def file_records(files: FileList, sysroot: Sysroot) -> list[FileRecord]:
    return [_record(entry, sysroot) for entry in files.entries()]


def _record(entry: Entry, sysroot: Sysroot) -> FileRecord:
    return FileRecord(
        path=entry.path,
        kind=entry.kind.value,
        mode=f"{entry.mode:04o}",
        size=entry.size(),
        source=describe_source(entry, sysroot),
        reason=entry.reason.text,
        cause=entry.reason.cause,
        target=entry.target if entry.kind == Kind.SYMLINK else None,
    )


def describe_source(entry: Entry, sysroot: Sysroot) -> str:
    """Where the bytes came from, independent of where the project or the output directory lives."""
    if entry.kind != Kind.FILE:
        return entry.kind.value
    if entry.source is None:
        return "generated"
    source = Path(entry.source)
    if source.is_relative_to(PROJECT_ROOT):
        return f"beoboot:{source.relative_to(PROJECT_ROOT)}"
    if str(sysroot.root) == "/":
        return str(source)
    if source.is_relative_to(sysroot.root):
        return "/" + str(source.relative_to(sysroot.root))
    return str(source)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(outdir: Path) -> Manifest | None:
    path = outdir / MANIFEST_NAME
    try:
        return Manifest.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise BeobootError(f"{path} is not a beoboot manifest: {exc}", hint="delete it and build again") from None


def manifest_for_image(image: Path) -> tuple[Manifest, Artifact]:
    """The manifest beside an image file, and that image's artifact row."""
    manifest = load_manifest(image.parent)
    if manifest is None:
        raise BeobootError(
            f"no {MANIFEST_NAME} beside {image}", hint="give an image from a beoboot-build output directory"
        )
    for art in manifest.artifacts:
        if art.path == image.name:
            return manifest, art
    raise BeobootError(
        f"{image} is not listed in {image.parent / MANIFEST_NAME}", hint="rebuild, or name an image it lists"
    )
