"""`bench data build fgvc`: official archives + VPT's json splits -> the fgvc suite's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from bench.cli import main
from bench.data import read_split
from bench.suite import load_suite


def _jpg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), value % 256, np.uint8)).save(path)


def _splits(root: Path, folder: str, keys: dict[str, int]) -> None:
    """VPT-style json splits: every 3rd image to val, every 5th to test, the rest to train."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    items = list(keys.items())
    parts = {"val": dict(items[1::3]), "test": dict(items[2::5])}
    parts["train"] = {k: v for k, v in items if k not in parts["val"] and k not in parts["test"]}
    for split, mapping in parts.items():
        (root / folder / f"{split}.json").write_text(json.dumps(mapping))


def _cub(raw: Path, splits: Path) -> dict[str, int]:
    keys = {f"{c:03d}.Bird_{c}/Bird_{c}_{i:04d}_{c * 10 + i}.jpg": c for c in (1, 2, 3) for i in range(4)}
    for k, c in keys.items():
        _jpg(raw / "CUB_200_2011" / "images" / k, c * 40)
    (raw / "CUB_200_2011" / "attributes.txt").write_text("")
    _splits(splits / "json" / "CUB_200_2011", "", keys)
    return keys


# car_ims: sorted by class; the devkit release numbers train and test apart, in another order
CARS = [  # (car_ims number, test flag, class, bbox)
    (1, 0, 1, (10, 11, 50, 40)), (2, 1, 1, (12, 13, 51, 41)), (3, 0, 1, (14, 15, 52, 42)),
    (4, 0, 2, (16, 17, 53, 43)), (5, 1, 2, (18, 19, 54, 44)), (6, 0, 3, (20, 21, 55, 45)),
    (7, 1, 3, (22, 23, 56, 46)), (8, 0, 3, (24, 25, 57, 47)),
]


def _struct(rows: list[dict]) -> np.ndarray:
    dtype = [(k, "O") for k in rows[0]]
    return np.array([tuple(r[k] for k in rows[0]) for r in rows], dtype=dtype)


def _cars_splits(splits: Path) -> dict[str, int]:
    keys = {f"car_ims/{n:06d}.jpg": c for n, _, c, _ in CARS}
    _splits(splits / "Stanford-cars", "", keys)
    return keys


def _cars_devkit_copy(raw: Path, nested: bool) -> dict[str, Path]:
    """The cars_train/cars_test release (Kaggle's nesting or torchvision's), its devkit
    annotations and car_ims' cars_annos.mat; returns car_ims name -> the copy's file."""
    where = {}
    counters = {0: 0, 1: 0}
    train_ann, test_ann, all_ann = [], [], []
    for n, test, c, box in reversed(CARS):  # another numbering than car_ims'
        counters[test] += 1
        split = "cars_test" if test else "cars_train"
        fname = f"{counters[test]:05d}.jpg"
        folder = raw / split / split if nested else raw / split
        _jpg(folder / fname, n * 20)
        where[f"car_ims/{n:06d}.jpg"] = folder / fname
        ann = dict(bbox_x1=box[0], bbox_y1=box[1], bbox_x2=box[2], bbox_y2=box[3], **{"class": c}, fname=fname)
        (test_ann if test else train_ann).append(ann)
    for n, test, c, box in CARS:
        all_ann.append(dict(relative_im_path=f"car_ims/{n:06d}.jpg", bbox_x1=box[0], bbox_y1=box[1],
                            bbox_x2=box[2], bbox_y2=box[3], **{"class": c}, test=test))
    (raw / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(raw / "devkit" / "cars_train_annos.mat", {"annotations": _struct(train_ann)})
    savemat(raw / "cars_test_annos_withlabels.mat", {"annotations": _struct(test_ann)})
    savemat(raw / "cars_annos.mat", {"annotations": _struct(all_ann)})
    return where


def _build(raw, splits, out, *extra):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build", "fgvc", "--raw", str(raw), "--splits", str(splits), "--out", str(out), *extra])
    return exit_info.value.code


def test_cub_and_car_ims_build_into_the_layout_the_fgvc_suite_reads(tmp_path, capsys):
    raw, splits, out = tmp_path / "raw", tmp_path / "splits", tmp_path / "out"
    cub = _cub(raw, splits)
    cars = _cars_splits(splits)
    for n, _, c, _ in CARS:
        _jpg(raw / "stanford_cars_original" / "car_ims" / f"{n:06d}.jpg", n * 20)
    assert _build(raw, splits, out, "--tasks", "cub,cars") == 0
    suite = load_suite("fgvc")
    for task, keys, folder in (("cub", cub, "CUB_200_2011"), ("stanford_cars", cars, "Stanford-cars")):
        got = {}
        for split in ("train", "val", "test"):
            items = read_split(suite, suite.task(task), out, split)
            assert all(p.is_file() for p, _ in items.items)
            got.update({str(p.relative_to(out / folder)): y for p, y in items.items})
        assert len(got) == len(keys)
        assert json.loads((out / folder / "train.json").read_text()) == \
            json.loads((splits / ("json/CUB_200_2011" if task == "cub" else "Stanford-cars") / "train.json").read_text())
    # the images are the archive's files, linked (same inode) unless --copy
    assert (out / "CUB_200_2011" / "images" / next(iter(cub))).stat().st_ino == \
        (raw / "CUB_200_2011" / "images" / next(iter(cub))).stat().st_ino
    assert not (out / ".building").exists()
    # the manifest agrees with the tree as bench reads it, and notices a changed image
    from bench.databuild.manifest import compare, read_manifest
    manifest = read_manifest(out / "CUB_200_2011" / "manifest.csv")
    tree = {s: read_split(suite, suite.task("cub"), out, s).items for s in ("train", "val", "test")}
    listed = sum(len(items) for items in tree.values())  # the toy splits share an image
    assert len(manifest) == listed and compare("cub", manifest, tree) == (listed, [])
    changed = tree["val"][0][0]
    changed.unlink()  # a hard link: replace it, leaving the archive's file alone
    _jpg(changed, 7)
    assert [(d.split, d.index, d.what) for d in compare("cub", manifest, tree)[1]] == [("val", 0, "pixels")]
    # built datasets are kept by the next run
    assert _build(raw, splits, out, "--tasks", "cub") == 0
    assert "present" in capsys.readouterr().out


@pytest.mark.parametrize("nested", [True, False], ids=["kaggle-nested", "torchvision"])
def test_the_cars_train_cars_test_copy_is_matched_to_car_ims_names_by_box(tmp_path, capsys, nested):
    raw, splits, out = tmp_path / "raw", tmp_path / "splits", tmp_path / "out"
    keys = _cars_splits(splits)
    where = _cars_devkit_copy(raw, nested)
    assert _build(raw, splits, out, "--tasks", "stanford_cars", "--copy") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("nested as in Kaggle's" if nested else "torchvision's layout") in text
    assert "matched 8 images to car_ims names through cars_annos.mat" in text
    for name in keys:
        assert (out / "Stanford-cars" / name).read_bytes() == where[name].read_bytes()


def test_missing_images_and_a_missing_cars_annos_mat_are_named(tmp_path, capsys):
    raw, splits, out = tmp_path / "raw", tmp_path / "splits", tmp_path / "out"
    cub = _cub(raw, splits)
    gone = sorted(cub)[5]
    (raw / "CUB_200_2011" / "images" / gone).unlink()
    _cars_splits(splits)
    _cars_devkit_copy(raw, nested=True)
    (raw / "cars_annos.mat").unlink()
    assert _build(raw, splits, out, "--tasks", "cub,cars") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "cub: 1 of 12 images the split files list are missing" in err and gone in err
    assert "not cars_annos.mat anywhere under it" in err and "Traceback" not in err
    assert not (out / "CUB_200_2011").exists() and not (out / "Stanford-cars").exists()


def test_bad_folders_are_refused_with_the_flag_named(tmp_path, capsys):
    assert _build(tmp_path / "nope", tmp_path, tmp_path / "out") == 2
    assert "--raw" in capsys.readouterr().err
    (tmp_path / "raw").mkdir()
    assert _build(tmp_path / "raw", tmp_path / "raw", tmp_path / "out", "--tasks", "dogs") == 1
    assert "no folder named Stanford-dogs" in " ".join(capsys.readouterr().err.split())
