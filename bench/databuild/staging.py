"""Writing one task folder so that a build can be killed at any moment.

A task is written under `<out>/.building/<task>/` and renamed to `<out>/<task>/` only when all
its splits, its `manifest.csv` and its `build.json` are there, so `bench run` (which looks for
`<out>/<task>`) never sees half a task. Inside the staging folder each image is written to a
temporary name and renamed, and each split's list is written last, so a split whose list exists
is complete and an image file that exists is whole: a resumed build skips both.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .manifest import (MANIFEST, Entry, bytes_sha256, file_sha256, pixel_sha256, read_manifest,
                       write_manifest)

STAGING = ".building"
BUILD_INFO = "build.json"
IMAGE_FORMATS = {"png": "png", "jpeg": "jpg"}

Progress = Callable[[str, str, int, int], None]   # (task, split, done, total)


def encode(rgb: np.ndarray, fmt: str) -> bytes:
    """PNG (lossless; zlib level 1: on photographs about 10% larger than PIL's default level 6 and
    4-5x faster, benchmarks/data_build.py) or JPEG as NOAH's get_vtab1k.py writes it: PIL's
    defaults (quality 75, 4:2:0 chroma subsampling)."""
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="JPEG")
    return buf.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def atomic_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


@dataclass
class TaskResult:
    """What building one task (or FGVC dataset) came to, for the command's summary table."""
    task: str
    status: str              # built | present | manual | failed
    detail: str = ""
    images: int = 0
    bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def built_info(final: Path) -> dict | None:
    """A finished folder's build.json, or None when `bench data build` did not finish it."""
    info = final / BUILD_INFO
    if not (info.is_file() and (final / MANIFEST).is_file()):
        return None
    return json.loads(info.read_text(encoding="utf-8"))


def refuse_foreign(final: Path) -> None:
    if final.exists() and built_info(final) is None:
        raise UserError(f"{final} exists but was not written by `bench data build` (it has no "
                        f"{BUILD_INFO} and {MANIFEST}); move it away or pass another --out")


def publish(staging: Path, final: Path) -> Path:
    """Move a whole staged folder into place (one rename) and drop `.building` once empty."""
    if final.exists():
        raise UserError(f"{final} appeared while this build ran; its build is in {staging}")
    os.replace(staging, final)
    try:
        staging.parent.rmdir()  # .building, once no other task is in it
    except OSError:
        pass
    return final


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _batches(it: Iterable, n: int) -> Iterator[list]:
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


class TaskWriter:
    """One task folder of the `vtab1k-folder` layout, written resumably (see the module doc)."""

    def __init__(self, out: Path, task: str, fmt: str, workers: int = 2):
        if fmt not in IMAGE_FORMATS:
            raise UserError(f"--format {fmt!r}: choose png (lossless) or jpeg")
        self.task, self.fmt, self.ext = task, fmt, IMAGE_FORMATS[fmt]
        self.final = out / task
        self.staging = out / STAGING / task
        self.workers = max(1, workers)
        self.entries: dict[str, list[Entry]] = {}

    # ------------------------------------------------------------------------------ state
    def start(self, provenance: dict) -> bool:
        """Prepare the staging folder; True when it resumes an earlier, interrupted build."""
        marker = self.staging / ".provenance.json"
        if self.staging.is_dir() and marker.is_file():
            before = json.loads(marker.read_text(encoding="utf-8"))
            if before == provenance:
                return True
            shutil.rmtree(self.staging)  # another source or format: start this task again
        self.staging.mkdir(parents=True, exist_ok=True)
        atomic_text(marker, json.dumps(provenance, sort_keys=True))
        return False

    def split_done(self, split: str) -> bool:
        if split in self.entries:
            return True
        part = self.staging / f".{split}.{MANIFEST}"
        if (self.staging / f"{split}.txt").is_file() and part.is_file():
            self.entries[split] = read_manifest(part)
            return True
        return False

    # ------------------------------------------------------------------------------ writing
    def write_split(self, split: str, examples: Iterable[tuple[np.ndarray, int]], total: int,
                    progress: Progress | None = None) -> list[Entry]:
        """Write a split's images (skipping whole ones an interrupted build left), then its list."""
        folder = self.staging / "images" / split
        folder.mkdir(parents=True, exist_ok=True)

        def one(job) -> Entry:
            index, (rgb, label) = job
            rel = f"images/{split}/{index:06d}.{self.ext}"
            path = self.staging / rel
            if path.is_file():  # written whole by an earlier attempt (temp name, then rename)
                sha = pixel_sha256(rgb) if self.fmt == "png" else file_sha256(path)
            else:
                data = encode(rgb, self.fmt)
                sha = pixel_sha256(rgb) if self.fmt == "png" else bytes_sha256(data)
                atomic_write(path, data)
            return Entry(split, index, rel, int(label), sha)

        entries: list[Entry] = []
        with ThreadPoolExecutor(self.workers) as pool:
            for batch in _batches(enumerate(examples), 64):
                entries.extend(pool.map(one, batch))
                if progress is not None:
                    progress(self.task, split, len(entries), total)
        self._write_list(split, entries)
        return entries

    def combine(self, split: str, parts: list[str]) -> list[Entry]:
        """A split made of other splits' images in order (train800val200 = train800 + val200):
        its list points at their files, nothing is copied."""
        entries = [Entry(split, i, e.file, e.label, e.sha256)
                   for i, e in enumerate(e for p in parts for e in self.entries[p])]
        self._write_list(split, entries)
        return entries

    def _write_list(self, split: str, entries: list[Entry]) -> None:
        write_manifest(self.staging / f".{split}.{MANIFEST}.tmp", entries)
        os.replace(self.staging / f".{split}.{MANIFEST}.tmp", self.staging / f".{split}.{MANIFEST}")
        atomic_text(self.staging / f"{split}.txt", "".join(f"{e.file} {e.label}\n" for e in entries))
        self.entries[split] = entries

    def finish(self, splits: list[str], info: dict) -> Path:
        """Write manifest.csv and build.json, then move the task into place."""
        write_manifest(self.staging / MANIFEST, (e for s in splits for e in self.entries[s]))
        info = {**info, "format": self.fmt, "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "splits": {s: len(self.entries[s]) for s in splits}}
        atomic_text(self.staging / BUILD_INFO, json.dumps(info, indent=2, sort_keys=True) + "\n")
        for leftover in self.staging.glob(".*"):
            if leftover.is_file():
                leftover.unlink()
        return publish(self.staging, self.final)
