"""Helpers for the tests: toy image trees in the community layouts, and `bench` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


# Colours far apart in RGB: a frozen ViT's features separate them, so a run on this toy data
# can be required to reach a high accuracy.
PALETTE = [(230, 40, 40), (40, 200, 60), (50, 60, 230), (240, 220, 40), (200, 60, 220), (40, 220, 220)]


def toy_image(label: int, rng: np.random.Generator, size: int = 24) -> Image.Image:
    base = np.array(PALETTE[label % len(PALETTE)], dtype=np.float64)
    pixels = base + rng.normal(0, 20, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_vtab_task(root: Path, folder: str, num_classes: int, n_train: int = 40, n_val: int = 10,
                    n_test: int = 30, seed: int = 0, ext: str = "jpg") -> Path:
    """A task in the VTAB-1k folder layout (NOAH's get_vtab1k.py), with toy images."""
    rng = np.random.default_rng(seed)
    task = root / folder
    lines: dict[str, list[str]] = {}
    for split, n in (("train", n_train + n_val), ("test", n_test)):
        (task / "images" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i in range(n):
            y = i % num_classes
            rel = f"images/{split}/{i:04d}.{ext}"
            toy_image(y, rng).save(task / rel)
            lines[split].append(f"{rel} {y}")
    files = {"train800": lines["train"][:n_train], "val200": lines["train"][n_train:],
             "train800val200": lines["train"], "test": lines["test"]}
    for name, rows in files.items():
        (task / f"{name}.txt").write_text("\n".join(rows) + "\n")
    return task


def write_fgvc_task(root: Path, folder: str, image_dir: str, class_ids: list[int],
                    per_split: dict[str, int], seed: int = 0) -> Path:
    """A task in VPT's FGVC json layout; class ids are arbitrary integers, as in the releases."""
    rng = np.random.default_rng(seed)
    task = root / folder
    img_root = task / image_dir if image_dir else task
    for split, n in per_split.items():
        mapping = {}
        for i in range(n):
            cid = class_ids[i % len(class_ids)]
            rel = f"{cid:03d}.class/{split}_{i:03d}.jpg"
            (img_root / rel).parent.mkdir(parents=True, exist_ok=True)
            toy_image(sorted(class_ids).index(cid), rng).save(img_root / rel)
            mapping[rel] = cid
        (task / f"{split}.json").write_text(json.dumps(mapping))
    return task


TOY_SUITE = """
name = "toy"
description = "two toy tasks in the VTAB-1k layout"
format = "vtab1k-folder"
image_size = 32
backbone = "peftbench_demo_vit.fmnist"
seeds = [0]
groups = ["natural", "structured"]

[splits]
tune = ["train800", "val200"]
final = ["train800val200", "test"]

[hparams]
epochs = {epochs}
warmup_epochs = 1
batch_size = 10
eval_batch_size = 50

[hparams.full]
lr = 0.002

[hparams.linear]
lr = 10.0

[[tasks]]
name = "colours"
group = "natural"
num_classes = 3
aliases = ["colors"]

[[tasks]]
name = "more_colours"
group = "structured"
num_classes = 4
"""


def bench(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
          check: bool = False) -> subprocess.CompletedProcess:
    """The `bench` command as a user runs it, in a fresh process."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def record_files(results: Path) -> list[Path]:
    """The current run records under a results root (not plans, manifests or superseded records)."""
    return sorted(p for p in results.rglob("*.json")
                  if not {"_plans", "_submissions", "superseded"} & set(p.parts) and not p.name.startswith("."))


def write_imagefolder_task(root: Path, folder: str, classes: list[str], per_split: dict[str, int],
                           seed: int = 0) -> Path:
    """A task in torchvision's ImageFolder layout: <task>/<split>/<class>/<image>."""
    rng = np.random.default_rng(seed)
    task = root / folder
    for split, n in per_split.items():
        for i in range(n):
            label = i % len(classes)
            path = task / split / classes[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            toy_image(label, rng).save(path)
    return task


def ok_record(spec, top1: float = 80.0, **metrics) -> dict:
    """A well-formed ok record of `spec` (for tests that write records without running)."""
    return {"run_id": spec.run_id, "status": "ok", "spec": spec.to_dict(), "finished_at": "2026-01-01T00:00:00",
            "metrics": {"top1": top1, **metrics}}
