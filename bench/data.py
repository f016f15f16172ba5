"""Data readers for the community's on-disk formats, and the image pipeline.

- `vtab1k-folder` (NOAH's get_vtab1k.py): `<root>/<task>/<split>.txt`, each line
  `images/<split>/<file> <label>` (0-based), paths relative to `<root>/<task>/`.
- `fgvc-json` (VPT): `<root>/<task>/<split>.json`, `{"<relative image path>": class_id}`, paths
  relative to `<root>/<task>/<image_dir>/`; class ids remapped to 0..C-1 in sorted order over
  all of the task's json splits, so every split agrees on the mapping.
- `demo`: materialised by `bench.demo` into the vtab1k-folder layout, then read as such.

A split name `a+b` concatenates splits (e.g. FGVC's `train+val`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

from . import demo
from .errors import DataError, UserError
from .suite import Suite, Task

VTAB_SPLITS = ("train800", "val200", "train800val200", "test")
FGVC_SPLITS = ("train", "val", "test")


@dataclass
class SplitItems:
    task: str
    split: str
    items: list[tuple[Path, int]]
    source: str  # the split file(s), for messages
    bad_lines: list[str] = field(default_factory=list)


def layout_help(suite: Suite) -> str:
    if suite.format == "fgvc-json":
        return ("expected VPT's FGVC layout: <data-root>/<task>/{train,val,test}.json mapping image "
                "paths to class ids, images under <data-root>/<task>/<image_dir>/")
    return ("expected the VTAB-1k layout written by NOAH's get_vtab1k.py: "
            "<data-root>/<task>/{train800,val200,train800val200,test}.txt, each line "
            "'images/<split>/<file> <label>', images under <data-root>/<task>/images/")


def resolve_data_root(suite: Suite, data_root: str | Path | None) -> Path:
    """The folder holding the suite's task folders; the demo is materialised there on first use."""
    if suite.format == "demo":
        return demo.materialize(Path(data_root).expanduser() if data_root else None)
    if data_root is None:
        raise UserError(f"suite {suite.name!r} reads data from disk: pass --data-root DIR "
                        f"({layout_help(suite)})")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-root {root} does not exist or is not a directory "
                        f"({layout_help(suite)})")
    return root


def task_dir(suite: Suite, task: Task, root: Path) -> Path:
    """The task's folder under `root`, by its name or any alias (case-insensitively)."""
    candidates = [task.folder_name, task.name, *task.aliases]
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    lower = {c.lower() for c in candidates}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.name.lower() in lower:
            return entry
    raise DataError(f"data root {root} has no folder for task {task.name!r} of suite "
                    f"{suite.name!r} (looked for: {', '.join(dict.fromkeys(candidates))}); "
                    f"{layout_help(suite)}")


def _vtab_split(folder: Path, task: Task, split: str, strict: bool) -> SplitItems:
    path = folder / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"task {task.name!r}: split file {path} not found; expected one of "
                        f"{', '.join(s + '.txt' for s in VTAB_SPLITS)} in {folder}")
    items, bad = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            rel, label = parts[0], int(parts[1])
        except (IndexError, ValueError):
            bad.append(f"{path}:{lineno}: expected '<image path> <integer label>', got {line!r}")
            continue
        items.append((folder / rel, label))
    if bad and strict:
        raise DataError(bad[0] + (f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""))
    return SplitItems(task.name, split, items, str(path), bad)


def fgvc_class_map(folder: Path) -> dict[int, int]:
    ids: set[int] = set()
    for s in FGVC_SPLITS:
        p = folder / f"{s}.json"
        if p.is_file():
            ids.update(int(v) for v in _read_json(p).values())
    return {cid: i for i, cid in enumerate(sorted(ids))}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{\"<image path>\": class_id}}, "
                        f"got {type(data).__name__}")
    bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise DataError(f"{path}: class id of {bad[0]!r} is {data[bad[0]]!r}, expected an integer")
    return data


def _fgvc_split(folder: Path, task: Task, split: str) -> SplitItems:
    path = folder / f"{split}.json"
    if not path.is_file():
        raise DataError(f"task {task.name!r}: split file {path} not found; expected "
                        f"{', '.join(s + '.json' for s in FGVC_SPLITS)} in {folder}")
    mapping = fgvc_class_map(folder)
    image_root = folder / task.image_dir if task.image_dir else folder
    items = [(image_root / rel, mapping[int(cid)]) for rel, cid in _read_json(path).items()]
    return SplitItems(task.name, split, items, str(path))


def read_split(suite: Suite, task: Task, root: Path, split: str, strict: bool = True) -> SplitItems:
    """The (image path, label) list of a task's split; `a+b` concatenates splits."""
    folder = task_dir(suite, task, root)
    parts = []
    for name in split.split("+"):
        if suite.format == "fgvc-json":
            parts.append(_fgvc_split(folder, task, name))
        else:
            parts.append(_vtab_split(folder, task, name, strict))
    if len(parts) == 1:
        return parts[0]
    return SplitItems(task.name, split, [it for p in parts for it in p.items],
                      " + ".join(p.source for p in parts), [b for p in parts for b in p.bad_lines])


def check_labels(split: SplitItems, num_classes: int) -> None:
    bad = [(p, y) for p, y in split.items if not 0 <= y < num_classes]
    if bad:
        raise DataError(f"task {split.task!r} split {split.split!r} ({split.source}): "
                        f"{len(bad)} labels outside 0..{num_classes - 1}, e.g. {bad[0][1]} for "
                        f"{bad[0][0]}; labels must be 0-based class indices")


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {exc}") from None


def build_transforms(suite: Suite, mean, std, train: bool):
    """(decode, augment): decode turns a PIL image into a resized uint8 tensor and is
    deterministic, so its output can be cached; augment runs on that tensor every time."""
    size = suite.image_size
    to_float = [T.ConvertImageDtype(torch.float32), T.Normalize(mean, std)]
    if suite.transform == "crop-flip":
        # FGVC as VPT runs it: resize to size/0.875, random crop + flip to train, centre crop to test
        resize = int(round(size / 0.875))
        decode = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.PILToTensor()])
        steps = [T.RandomCrop(size), T.RandomHorizontalFlip()] if train else [T.CenterCrop(size)]
        return decode, T.Compose([*steps, *to_float])
    # VTAB as VPT runs it: a plain resize to the square input size, no augmentation
    decode = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.PILToTensor()])
    return decode, T.Compose(to_float)


class ImageDataset(Dataset):
    """(image, label) pairs; with `cache`, each image is decoded and resized once, then kept as
    uint8 in memory (for training splits, read every epoch; a one-pass eval split needs none)."""

    def __init__(self, items: list[tuple[Path, int]], transforms, cache: bool = False):
        self.items = items
        self.decode, self.augment = transforms
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        if self.cache is None:
            return self.augment(self.decode(load_image(path))), label
        pixels = self.cache.get(i)
        if pixels is None:
            pixels = self.cache[i] = self.decode(load_image(path))
        return self.augment(pixels), label


def check_task(suite: Suite, task: Task, root: Path, splits: list[str], decode: bool = True):
    """One report row per split: what `bench data check` prints."""
    rows = []
    for split in splits:
        row = {"task": task.name, "split": split, "listed": 0, "found": 0, "missing": 0,
               "unreadable": 0, "bad_labels": 0, "bad_lines": 0, "classes": 0, "problems": []}
        try:
            items = read_split(suite, task, root, split, strict=False)
        except DataError as exc:
            row["problems"].append(str(exc))
            rows.append(row)
            continue
        row["listed"] = len(items.items)
        row["bad_lines"] = len(items.bad_lines)
        row["problems"].extend(items.bad_lines[:3])
        counts = Counter(y for _, y in items.items)
        row["classes"] = len(counts)
        row["min_per_class"] = min(counts.values()) if counts else 0
        row["max_per_class"] = max(counts.values()) if counts else 0
        for path, label in items.items:
            if not 0 <= label < task.num_classes:
                row["bad_labels"] += 1
                if row["bad_labels"] <= 3:
                    row["problems"].append(f"label {label} outside 0..{task.num_classes - 1}: {path}")
            if not path.is_file():
                row["missing"] += 1
                if row["missing"] <= 3:
                    row["problems"].append(f"missing image: {path}")
                continue
            row["found"] += 1
            if decode:
                try:
                    load_image(path)
                except DataError as exc:
                    row["unreadable"] += 1
                    if row["unreadable"] <= 3:
                        row["problems"].append(str(exc))
        rows.append(row)
    return rows
