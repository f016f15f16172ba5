"""A task's `manifest.csv`: one row per image of every split, and the pixel-exact comparison of a
data tree against a manifest (`bench data check --manifest`).

    split,index,file,label,sha256
    train800,0,images/train800/000000.png,3,9f2c...

`index` is the image's line in the split's list, `file` its path relative to the task folder,
`sha256` the SHA-256 of its decoded pixels: the bytes `f"{height}x{width}x3\\n"` followed by the
8-bit RGB array in row-major (height, width, channel) order, as `bench.data.open_image` decodes
the file. Two trees agree on an image exactly when they agree on that hash, whatever the file
format: a PNG and the TFDS array it was written from hash the same, a JPEG re-encoding does not.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, UserError
from ..images import open_image, to_rgb

MANIFEST = "manifest.csv"
COLUMNS = ("split", "index", "file", "label", "sha256")


@dataclass(frozen=True)
class Entry:
    split: str
    index: int
    file: str
    label: int
    sha256: str


def pixel_sha256(rgb: np.ndarray) -> str:
    """The manifest's hash of an (H, W, 3) uint8 RGB array."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {a.shape}")
    h = hashlib.sha256(f"{a.shape[0]}x{a.shape[1]}x3\n".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """The manifest's hash of an image file, decoded as `bench run` decodes it."""
    img, _ = open_image(path)
    return pixel_sha256(np.asarray(img))


def bytes_sha256(data: bytes) -> str:
    """The manifest's hash of an encoded image held in memory (a JPEG before it is written)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return pixel_sha256(np.asarray(to_rgb(img)[0]))


def write_manifest(path: Path, entries: Iterable[Entry]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for e in entries:
            w.writerow((e.split, e.index, e.file, e.label, e.sha256))


def read_manifest(path: Path) -> list[Entry]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"manifest {path} not found") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise DataError(f"{path}: not a peftbench manifest (its first line must be "
                        f"{','.join(COLUMNS)}, got {','.join(rows[0]) if rows else 'nothing'})")
    entries = []
    for lineno, row in enumerate(rows[1:], 2):
        try:
            split, index, file, label, sha = row
            entries.append(Entry(split, int(index), file, int(label), sha))
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected 'split,index,file,label,sha256', got "
                            f"{','.join(row)!r}") from None
    return entries


@dataclass(frozen=True)
class Difference:
    task: str
    split: str
    index: int
    what: str      # missing | extra | label | pixels | unreadable | split
    detail: str

    def line(self) -> str:
        where = f"{self.task}/{self.split}" + (f"[{self.index}]" if self.index >= 0 else "")
        return f"{where}: {self.what}: {self.detail}"


def hash_files(paths: list[Path], workers: int, progress=None) -> dict[Path, tuple[str | None, str | None]]:
    """Each file's manifest hash, decoded in `workers` threads: path -> (sha256, None), or
    (None, the DataError's message) for a missing or unreadable file. `progress(done, total)`."""
    def hashed(path: Path) -> tuple[str | None, str | None]:
        try:
            return file_sha256(path), None
        except DataError as exc:
            return None, str(exc)

    hashes: dict[Path, tuple[str | None, str | None]] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for path, result in zip(paths, pool.map(hashed, paths)):
            hashes[path] = result
            if progress is not None and (len(hashes) % 200 == 0 or len(hashes) == len(paths)):
                progress(len(hashes), len(paths))
    return hashes


def compare(task: str, manifest: list[Entry], tree: dict[str, list[tuple[Path, int]]],
            workers: int = 4, progress=None) -> tuple[int, list[Difference]]:
    """Every difference between a manifest and a task's tree (its splits' (path, label) lists):
    images missing or extra per split and index, labels, pixels. Returns (images compared,
    differences). Splits the manifest does not cover are not compared."""
    diffs: list[Difference] = []
    expected: dict[str, dict[int, Entry]] = {}
    for e in manifest:
        expected.setdefault(e.split, {})[e.index] = e
    jobs: list[tuple[Entry, Path]] = []
    for split, rows in expected.items():
        items = tree.get(split)
        if items is None:
            diffs.append(Difference(task, split, -1, "split", "the manifest lists this split, the tree "
                                    "has no such split list"))
            continue
        for index, entry in sorted(rows.items()):
            if index >= len(items):
                diffs.append(Difference(task, split, index, "missing",
                                        f"the tree's list has {len(items)} images; manifest: {entry.file}"))
                continue
            path, label = items[index]
            if label != entry.label:
                diffs.append(Difference(task, split, index, "label",
                                        f"{label} in the tree ({path}), {entry.label} in the manifest"))
            jobs.append((entry, path))
        for index in range(len(items)):
            if index not in rows:
                diffs.append(Difference(task, split, index, "extra",
                                        f"{items[index][0]} is not in the manifest"))

    paths = list(dict.fromkeys(path for _, path in jobs))  # train800val200 shares train800's files
    hashes = hash_files(paths, workers, None if progress is None else lambda d, n: progress(task, d, n))
    for entry, path in jobs:
        sha, error = hashes[path]
        if error is not None:
            what = "missing" if "not found" in error else "unreadable"
            diffs.append(Difference(task, entry.split, entry.index, what, error))
        elif sha != entry.sha256:
            diffs.append(Difference(task, entry.split, entry.index, "pixels",
                                    f"{path} decodes to other pixels than the manifest's "
                                    f"{entry.file} (sha256 {sha[:12]} vs {entry.sha256[:12]})"))
    diffs = _summarise(task, expected, tree, hashes, diffs)
    order = {split: i for i, split in enumerate(expected)}
    diffs.sort(key=lambda d: (order.get(d.split, len(order)), d.index, d.what))
    return len(jobs), diffs


def _summarise(task, expected, tree, hashes, diffs: list[Difference]) -> list[Difference]:
    """Say what a split's per-image differences amount to, where they have a simple reading:
    the same labelled images in another order (one difference instead of one per image), or
    every image re-encoded with the labels intact (a lossy copy, e.g. JPEG, of the same split)."""
    out = [d for d in diffs if d.split not in tree]
    for split, rows in expected.items():
        if split not in tree:
            continue
        mine = [d for d in diffs if d.split == split]
        pixels = [d for d in mine if d.what == "pixels"]
        if not pixels:
            out.extend(mine)
            continue
        items = tree[split]
        have = sorted((hashes.get(p, (None,))[0] or "", y) for p, y in items)
        want = sorted((e.sha256, e.label) for e in rows.values())
        if len(items) == len(rows) and have == want:
            out.append(Difference(task, split, -1, "order", f"the same {len(rows)} images with the same "
                                  f"labels, listed in another order ({len(pixels)} positions differ)"))
            continue
        out.extend(mine)
        if len(pixels) == len(rows) and not [d for d in mine if d.what == "label"]:
            out.append(Difference(task, split, -1, "pixels", f"all {len(rows)} images differ in pixels "
                                  "while every label agrees: a re-encoded (e.g. JPEG) copy of the split?"))
    return out


def manifest_for(task_folder: Path, task_names: tuple[str, ...], given: str | None,
                 single_task: bool) -> Path:
    """Which manifest a task is compared with: its own (`--manifest` without a value), the one in
    a folder of manifests (`<dir>/<task>/manifest.csv`), or a manifest file (one task only)."""
    if given is None or given == "":
        return task_folder / MANIFEST
    path = Path(given).expanduser()
    if path.is_dir():
        for name in task_names:
            for candidate in (path / name / MANIFEST, path / f"{name}.csv"):
                if candidate.is_file():
                    return candidate
        return path / task_names[0] / MANIFEST
    if path.is_file():
        if not single_task:
            raise UserError(f"--manifest {path} is one file, for one task: pass --tasks with one "
                            "task, or a folder holding <task>/manifest.csv for each task")
        return path
    raise UserError(f"--manifest {path} does not exist; pass a manifest.csv, a folder of "
                    "<task>/manifest.csv, or --manifest alone to use each task's own")
