"""A suite's data: the data root, a task's splits (read by the suite's format, one file each in
`bench/formats/`), labels, and the image pipeline (decode once, resize, normalise).

A split name `a+b` concatenates splits (e.g. FGVC's `train+val`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from .errors import DataError, UserError
from .formats import FORMATS, SplitItems
from .images import load_image, open_image, to_rgb  # noqa: F401 - part of this module's interface
from .paths import cache_dir
from .sources import SOURCES
from .suite import Suite, Task

def layout_help(suite: Suite) -> str:
    return FORMATS.get(suite.format).layout


def resolve_data_root(suite: Suite, data_root: str | Path | None, progress=None) -> Path:
    """The folder holding the suite's task folders. A suite with a data source (the demo) has
    it written there on first use (default: the source's folder in the cache)."""
    if suite.source:
        source = SOURCES.get(suite.source)()
        return source.prepare(Path(data_root).expanduser() if data_root else None, progress=progress)
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


def read_split(suite: Suite, task: Task, root: Path, split: str, strict: bool = True) -> SplitItems:
    """The (image path, label) list of a task's split, read by the suite's data format;
    `a+b` concatenates splits."""
    folder = task_dir(suite, task, root)
    reader = FORMATS.get(suite.format)()
    parts = [reader.read_split(task, folder, name, strict) for name in split.split("+")]
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


class ToFloat:
    """uint8 images (..., C, H, W), one or a batch -> float32 `(x / 255 - mean) / std`: the same
    arithmetic as torchvision's ConvertImageDtype + Normalize, bit for bit, without their
    per-call tensor building (and Normalize's zero-std check, a host sync on a GPU)."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        stats = self._stats.get(x.device)
        if stats is None:
            stats = self._stats[x.device] = (
                torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1),
                torch.tensor(self.std, dtype=torch.float32, device=x.device).view(-1, 1, 1))
        return x.to(torch.float32).div_(255).sub_(stats[0]).div_(stats[1])

    def __repr__(self) -> str:
        return f"ToFloat(mean={self.mean}, std={self.std})"


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalization(normalize: str, backbone_mean, backbone_std) -> tuple[tuple, tuple]:
    """(mean, std) for a suite's `normalize` key: the backbone's own statistics, ImageNet's
    (VPT's code uses them for every backbone), or none (pixels in [0, 1])."""
    if normalize == "backbone":
        return tuple(backbone_mean), tuple(backbone_std)
    if normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if normalize == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    raise UserError(f"normalize {normalize!r}: choose backbone, imagenet or none")


def build_transforms(suite: Suite, mean, std, train: bool, interpolation: str | None = None):
    """(decode, augment): decode turns a PIL image into a resized uint8 tensor and is
    deterministic, so its output can be cached; augment runs on that tensor every time.
    `interpolation` (default: the suite's) is PIL's bicubic or bilinear resampling."""
    size = suite.image_size
    mode = T.InterpolationMode(interpolation or suite.interpolation)
    to_float = [ToFloat(mean, std)]
    if suite.transform == "crop-flip":
        # FGVC as VPT runs it: resize to size/0.875, random crop + flip to train, centre crop to test
        resize = int(round(size / 0.875))
        decode = T.Compose([T.Resize(resize, interpolation=mode), T.PILToTensor()])
        steps = [T.RandomCrop(size), T.RandomHorizontalFlip()] if train else [T.CenterCrop(size)]
        return decode, T.Compose([*steps, *to_float])
    # VTAB as VPT runs it: a plain resize to the square input size, no augmentation
    decode = T.Compose([T.Resize((size, size), interpolation=mode), T.PILToTensor()])
    return decode, T.Compose(to_float)


def random_augmentation(suite: Suite, train: bool) -> bool:
    """Whether `build_transforms(suite, ..., train)` augments at random (then the same image
    gives a different tensor every epoch, and nothing computed from it can be cached)."""
    return train and suite.transform == "crop-flip"


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


# ------------------------------------------------------------------------- decoded splits
# A split is decoded and resized once into uint8 tensors: an epoch then costs no image decoding,
# and batches are cut from one tensor (normalised per batch, not per image). Decoded splits are
# kept in memory for the process (the tune stage reads the same splits for every grid point and
# the final stage the same test split for every seed) and, on request, on disk next to the data.
DECODE_FORMAT = 1  # bump when the on-disk layout changes
DECODE_CACHE_MODES = ("memory", "disk", "off")


def _memory_budget() -> int:
    """Bytes of decoded images kept in memory: a quarter of the RAM, at most 8 GiB."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 2**30
    return min(8 * 2**30, ram // 4)


@dataclass
class DecodedSplit:
    pixels: torch.Tensor | list[torch.Tensor]  # uint8 (N, C, H, W) when all images share a shape
    labels: torch.Tensor                       # int64 (N,)
    key: str
    seconds: float = 0.0                       # spent decoding in this call (0 for a cache hit)
    source: str = "decoded"                    # decoded | memory | disk

    @property
    def nbytes(self) -> int:
        if isinstance(self.pixels, torch.Tensor):
            return self.pixels.numel()
        return sum(p.numel() for p in self.pixels)


_DECODED: "OrderedDict[str, DecodedSplit]" = OrderedDict()


def decode_key(items: list[tuple[Path, int]], decode) -> str:
    """What a decoded split depends on: every image's path, label, size and mtime, and the
    decode transform (its repr names the size and interpolation)."""
    h = hashlib.sha256(f"peftbench-decoded-v{DECODE_FORMAT}\n{decode!r}\n".encode())
    for path, label in items:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DataError(f"image not found: {path}") from None
        h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _disk_path(split: SplitItems, key: str) -> list[Path]:
    """Where a decoded split is stored: beside the split file, else in the user's cache."""
    name = f"{split.split.replace('+', '_')}-{key[:20]}.pt"
    here = Path(split.source.split(" + ")[0]).parent / ".peftbench-decoded" / name
    return [here, cache_dir() / "decoded" / name]


def _read_disk(paths: list[Path], key: str, budget: int) -> DecodedSplit | None:
    for path in paths:
        if path.is_file() and path.stat().st_size <= budget:
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a torn or foreign file is a cache miss
                continue
            if blob.get("key") == key:
                return DecodedSplit(blob["pixels"], blob["labels"], key, source="disk")
    return None


def _write_disk(paths: list[Path], decoded: DecodedSplit) -> None:
    blob = {"key": decoded.key, "pixels": decoded.pixels, "labels": decoded.labels}
    for path in paths:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(blob, tmp)
            os.replace(tmp, path)
            return
        except OSError:  # a read-only data folder: try the next place
            tmp.unlink(missing_ok=True)


def decode_split(split: SplitItems, decode, workers: int = 0, cache: str = "memory",
                 budget: int | None = None) -> DecodedSplit | None:
    """The split's images decoded (and resized) once, as uint8 tensors; None when the split is
    larger than the memory budget (then it is read image by image, as `ImageDataset` does).
    `cache`: memory (keep it for this process), disk (also store it as a `.pt` file beside the
    split file, reused while no image changes), off (decode for this call only)."""
    if cache not in DECODE_CACHE_MODES:
        raise UserError(f"decode cache {cache!r}: choose from {', '.join(DECODE_CACHE_MODES)}")
    budget = _memory_budget() if budget is None else budget
    key = decode_key(split.items, decode)
    hit = _DECODED.get(key)
    if hit is not None:
        _DECODED.move_to_end(key)
        return DecodedSplit(hit.pixels, hit.labels, key, source="memory")
    if not split.items:
        return DecodedSplit(torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), key)
    paths = _disk_path(split, key) if cache == "disk" else []
    decoded = _read_disk(paths, key, budget) if paths else None
    if decoded is None:
        t0 = time.perf_counter()
        first = decode(load_image(split.items[0][0]))
        if first.numel() * len(split.items) > budget:
            return None
        threads = workers if workers > 0 else torch.get_num_threads()

        def one(item):
            return decode(load_image(item[0]))

        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                rest = list(pool.map(one, split.items[1:]))
        else:
            rest = [one(it) for it in split.items[1:]]
        images = [first, *rest]
        pixels = torch.stack(images) if all(im.shape == first.shape for im in images) else images
        labels = torch.tensor([y for _, y in split.items], dtype=torch.long)
        decoded = DecodedSplit(pixels, labels, key, seconds=time.perf_counter() - t0)
        if paths:
            _write_disk(paths, decoded)
    if cache != "off" and decoded.nbytes <= budget:
        _DECODED[key] = decoded
        while sum(d.nbytes for d in _DECODED.values()) > budget and len(_DECODED) > 1:
            _DECODED.popitem(last=False)
    return decoded


def clear_decoded() -> None:
    """Forget the decoded splits this process keeps in memory."""
    _DECODED.clear()


class DecodedDataset(Dataset):
    """A decoded split, indexed by a list of indices: returns a whole batch (images, labels).

    Deterministic transforms run once per batch on the stacked uint8 tensor, on `device`: the
    split is moved there once when `resident`, else batch by batch (as uint8, a quarter of the
    bytes of float). Random augmentation, or images of different shapes, run image by image on
    the host, as `ImageDataset` does."""

    def __init__(self, decoded: DecodedSplit, augment, per_image: bool = False,
                 device: torch.device | None = None, resident: bool = True):
        self.augment = augment
        self.per_image = per_image or not isinstance(decoded.pixels, torch.Tensor)
        self.pixels, self.labels = decoded.pixels, decoded.labels
        self.device = None if self.per_image else device
        if self.device is not None and resident:
            self.pixels, self.labels = self.pixels.to(self.device), self.labels.to(self.device)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def index_device(self) -> torch.device:
        """Where batch indices are best made (where the split lives)."""
        return self.labels.device

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, int):
            x, y = self[[index]]
            return x[0], y[0]
        if self.per_image:
            index = index.tolist() if isinstance(index, torch.Tensor) else list(index)
            return torch.stack([self.augment(self.pixels[i]) for i in index]), self.labels[index]
        index = torch.as_tensor(index, device=self.labels.device)
        x, y = self.pixels.index_select(0, index), self.labels.index_select(0, index)
        if self.device is not None:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return self.augment(x), y


class BatchLoader:
    """Batches of a dataset indexed by tensors of indices (`DecodedDataset`), in the order of
    `DataLoader(dataset, batch_size, shuffle, generator=gen)`: each epoch makes the same draws
    from `gen` (the seed DataLoader draws for its workers, then the permutations RandomSampler
    draws), so runs reproduce either way, without DataLoader's per-batch machinery."""

    def __init__(self, dataset, batch_size: int, shuffle: bool, gen: torch.Generator | None):
        self.dataset, self.batch_size, self.shuffle, self.generator = dataset, batch_size, shuffle, gen

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # DataLoader's base seed
            if self.generator is None:  # RandomSampler without a generator seeds a private one
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
                order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            else:
                order = torch.randperm(n, generator=self.generator)
                # RandomSampler draws another permutation, of which it yields nothing, when its
                # iterator runs out: draw it too, so the generator is where DataLoader leaves it
                torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        device = getattr(self.dataset, "index_device", None)
        if device is not None:
            order = order.to(device)
        for index in order.split(self.batch_size):
            yield self.dataset[index]


def batch_loader(dataset: Dataset, batch_size: int, shuffle: bool,
                 gen: torch.Generator | None) -> BatchLoader:
    return BatchLoader(dataset, batch_size, shuffle, gen)


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
        row["converted"] = []
        if not items.items:
            row["problems"].append(f"the split ({items.source}) lists no images")
        row["bad_lines"] = len(items.bad_lines)
        row["problems"].extend(items.bad_lines[:3])
        counts = Counter(y for _, y in items.items)
        row["labels"] = set(counts)
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
                    _, how = open_image(path)
                    if how:
                        row["converted"].append(f"{path}: {how}")
                except DataError as exc:
                    row["unreadable"] += 1
                    if row["unreadable"] <= 3:
                        row["problems"].append(str(exc))
        rows.append(row)
    return rows


def class_coverage_problems(task: Task, rows: list[dict]) -> list[str]:
    """A task whose splits together show fewer classes than it declares is mislabelled or
    truncated (a few images of a split cannot show every class, so splits are not judged alone)."""
    seen = {y for r in rows for y in r.get("labels", ()) if 0 <= y < task.num_classes}
    if not any(r["listed"] for r in rows) or len(seen) >= task.num_classes:
        return []
    absent = sorted(set(range(task.num_classes)) - seen)
    shown = ", ".join(map(str, absent[:10])) + (", ..." if len(absent) > 10 else "")
    return [f"{task.name}: the labels of its splits ({', '.join(r['split'] for r in rows)}) cover "
            f"{len(seen)} of the {task.num_classes} classes the suite declares (never seen: {shown}); "
            "check the split files, or the task's num_classes"]


def split_size_warnings(suite: Suite, task: Task, rows: list[dict]) -> list[str]:
    """Splits whose size differs from the suite's declared `split_sizes` (VTAB-1k: 800/200/1000)."""
    return [f"{task.name}/{r['split']}: {r['listed']} images, the suite's protocol has "
            f"{suite.split_sizes[r['split']]}" for r in rows
            if r["split"] in suite.split_sizes and r["listed"] and r["listed"] != suite.split_sizes[r["split"]]]


def default_workers() -> int:
    return max(1, torch.get_num_threads())
