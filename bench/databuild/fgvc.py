"""FGVC from the official archives and VPT's json splits, into the layout the fgvc suite reads.

VPT's split files (`{train,val,test}.json`, each `{"<image path>": class_id}`) name images
relative to each dataset's image folder (VPT's `get_imagedir`): `CUB_200_2011/images/`,
`nabirds/images/`, the `OxfordFlower/` folder, `Stanford-dogs/Images/` and the `Stanford-cars/`
folder (keys `car_ims/000001.jpg`, the numbering of the original all-in-one release). The build
finds, under `--raw`, the folder in which the split files' paths exist; links (or copies) every
listed image into `<out>/<dataset>/`; copies the split files beside them; writes a manifest.csv
(`bench.databuild.manifest`); and refuses a dataset with a listed image missing.

Stanford Cars' official site is gone, and the copies found today mostly hold the other release:
`cars_train/00001.jpg` and `cars_test/00001.jpg` (torchvision's layout; Kaggle's copy nests them as
`cars_train/cars_train/`) with the devkit's `cars_train_annos.mat` and
`cars_test_annos_withlabels.mat`. Their numbering is not car_ims' (car_ims is sorted by class):
an image is matched to its car_ims name through `cars_annos.mat` (car_ims' annotations) by its
split, class and bounding box, and the build says which copy it found.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, UserError
from ..formats.fgvc_json import class_map
from .manifest import MANIFEST, Entry, hash_files, write_manifest
from .staging import BUILD_INFO, STAGING, TaskResult, atomic_text, built_info, folder_bytes, publish, refuse_foreign

SPLIT_FILES = ("train", "val", "test")


@dataclass(frozen=True)
class FgvcDataset:
    task: str          # suites/fgvc.toml
    folder: str        # VPT's dataset folder, the one its README and configs use
    image_dir: str     # VPT's get_imagedir (suites/fgvc.toml's image_dir)
    archive: str       # where the images come from, for messages


DATASETS = (
    FgvcDataset("cub", "CUB_200_2011", "images",
                "CUB_200_2011.tgz (Caltech: https://data.caltech.edu/records/65de6-vp158), extracted"),
    FgvcDataset("nabirds", "nabirds", "images",
                "nabirds.tar.gz (Cornell Lab: https://dl.allaboutbirds.org/nabirds), extracted"),
    FgvcDataset("oxford_flowers", "OxfordFlower", "",
                "102flowers.tgz (VGG: https://www.robots.ox.ac.uk/~vgg/data/flowers/102/), extracted"),
    FgvcDataset("stanford_dogs", "Stanford-dogs", "Images",
                "images.tar (Stanford: http://vision.stanford.edu/aditya86/ImageNetDogs/), extracted"),
    FgvcDataset("stanford_cars", "Stanford-cars", "",
                "car_ims.tgz with cars_annos.mat, or cars_train.tgz + cars_test.tgz with the devkit "
                "and cars_annos.mat (the official site is gone; see README, Data)"),
)


def dataset_row(task: str) -> FgvcDataset:
    for d in DATASETS:
        if d.task == task:
            return d
    raise UserError(f"no FGVC build row for task {task!r}")


def _dirs(root: Path, depth: int):
    """root and its sub-folders down to `depth` levels, in sorted order."""
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            yield d
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                pass
        level = nxt


def find_splits(splits_root: Path, names: tuple[str, ...]) -> Path | None:
    """The folder of a dataset's json splits: named like the dataset and holding train.json."""
    wanted = {n.lower() for n in names}
    for d in _dirs(splits_root, 3):
        if d.name.lower() in wanted and (d / "train.json").is_file():
            return d
    return None


def read_split_file(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"split file {path} not found; VPT's splits have train.json, val.json and "
                        "test.json per dataset") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                             for v in data.values()):
        raise UserError(f"{path}: expected VPT's {{\"<image path>\": class_id}} mapping")
    return data


def find_image_root(raw: Path, keys: list[str]) -> Path | None:
    """The folder under `raw` in which most of a sample of the split files' image paths exist (a
    few missing images are then reported by name, not as a missing dataset)."""
    probe = keys[:: max(1, len(keys) // 8)][:8]
    best, hits = None, 0
    for d in _dirs(raw, 4):
        n = sum((d / k).is_file() for k in probe)
        if n > hits:
            best, hits = d, n
            if n == len(probe):
                break
    return best


# ------------------------------------------------------------------------------ Stanford Cars
def _annotations(path: Path) -> list[dict]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - a broken or foreign .mat: say which
        raise UserError(f"{path} is not a readable MATLAB file: {exc}") from None
    ann = mat.get("annotations")
    if ann is None:
        raise UserError(f"{path} has no 'annotations' (expected Stanford Cars' annotation file)")
    ann = ann.reshape(-1)
    return [{name: ann[name][i] for name in ann.dtype.names} for i in range(len(ann))]


def _box(a: dict) -> tuple[int, ...]:
    return tuple(int(a[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")) + (int(a["class"]),)


def cars_from_devkit_release(raw: Path, keys: list[str]) -> tuple[dict[str, Path], str]:
    """car_ims names -> image files of a cars_train/cars_test copy, matched through cars_annos.mat
    by (split, bounding box, class); and a sentence saying which copy was found."""
    dirs = list(_dirs(raw, 4))  # walked once for the two image folders and three annotation files
    folders = {}
    for split in ("cars_train", "cars_test"):
        found = next((d for d in dirs if d.name == split and (d / "00001.jpg").is_file()), None)
        if found is None:
            return {}, ""
        folders[split] = found
    files = {n: next((d / n for d in dirs if (d / n).is_file()), None)
             for n in ("cars_annos.mat", "cars_train_annos.mat", "cars_test_annos_withlabels.mat")}
    missing = [n for n, p in files.items() if p is None]
    if missing:
        raise UserError(
            f"Stanford Cars: found the cars_train/cars_test copy under {raw} ({folders['cars_train']}), "
            f"but not {', '.join(missing)} anywhere under it. VPT's splits name the original car_ims/ "
            "numbering (sorted by class), which only cars_annos.mat (car_ims' annotations) connects "
            "to cars_train/cars_test; cars_train_annos.mat is in the devkit (car_devkit.tgz) and "
            "cars_test_annos_withlabels.mat was published beside it. Place the missing files under "
            f"{raw} and run the same command again")
    by_box: dict[tuple, str] = {}
    for a in _annotations(files["cars_annos.mat"]):
        key = (int(a["test"]),) + _box(a)
        if key in by_box:
            raise UserError(f"{files['cars_annos.mat']}: two car_ims images share split, box and class "
                            f"{key}; cannot match the cars_train/cars_test copy by box")
        by_box[key] = str(a["relative_im_path"])
    mapping: dict[str, Path] = {}
    for test, split, ann_file in ((0, "cars_train", "cars_train_annos.mat"),
                                  (1, "cars_test", "cars_test_annos_withlabels.mat")):
        for a in _annotations(files[ann_file]):
            name = by_box.get((test,) + _box(a))
            if name is not None:
                mapping[name] = folders[split] / str(a["fname"])
    unmatched = [k for k in keys if k not in mapping]
    if unmatched:
        raise UserError(
            f"Stanford Cars: {len(unmatched)} of the split files' {len(keys)} images (e.g. {unmatched[0]}) "
            f"have no match in the cars_train/cars_test copy under {raw} by split, box and class "
            f"({files['cars_annos.mat']} against {files['cars_train_annos.mat']} and "
            f"{files['cars_test_annos_withlabels.mat']}); the copy's annotation files may not belong "
            "to its images (reported for some Kaggle copies)")
    nested = folders["cars_train"].parent.name == "cars_train"
    copy = ("the cars_train/cars_test copy" + (" nested as in Kaggle's (cars_train/cars_train/)" if nested else
                                               " (torchvision's layout)")
            + f" under {folders['cars_train'].parent}; matched {len(keys)} images to car_ims names "
              "through cars_annos.mat")
    return mapping, copy


# ------------------------------------------------------------------------------ the build
def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    if not copy:
        try:
            os.link(src, tmp)
            os.replace(tmp, dst)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _manifest(d: FgvcDataset, staging: Path, splits: dict[str, dict[str, int]], progress=None) -> list[Entry]:
    """The manifest rows of a built dataset, labelled as the fgvc-json format reads them (class
    ids mapped to 0..C-1 over all splits) and indexed in the split files' order."""
    mapping = class_map(staging)
    prefix = f"{d.image_dir}/" if d.image_dir else ""
    rows = [(s, i, prefix + k, mapping[int(cid)]) for s in SPLIT_FILES
            for i, (k, cid) in enumerate(splits[s].items())]
    files = list(dict.fromkeys(r[2] for r in rows))
    hashes = hash_files([staging / f for f in files], os.cpu_count() or 1,
                        None if progress is None else lambda n, total: progress(d.task, "manifest", n, total))
    for sha, error in hashes.values():
        if error is not None:
            raise DataError(f"{d.task}: {error}")
    return [Entry(s, i, f, y, hashes[staging / f][0]) for s, i, f, y in rows]


def build_dataset(d: FgvcDataset, raw: Path, splits_root: Path, out: Path, copy: bool,
                  names: tuple[str, ...], progress=None, log=print) -> TaskResult:
    t0 = time.perf_counter()
    final, staging = out / d.folder, out / STAGING / d.folder
    refuse_foreign(final)
    if built_info(final) is not None:
        return TaskResult(d.task, "present", f"already built in {final}")
    split_dir = find_splits(splits_root, (d.folder, *names))
    if split_dir is None:
        return TaskResult(d.task, "failed", f"{d.task}: no folder named {' or '.join(dict.fromkeys((d.folder, *names)))} "
                          f"with train.json under --splits {splits_root} (VPT's split files: "
                          "<dataset>/{train,val,test}.json)")
    splits = {s: read_split_file(split_dir / f"{s}.json") for s in SPLIT_FILES}
    keys = list(dict.fromkeys(k for s in SPLIT_FILES for k in splits[s]))
    image_root = find_image_root(raw, keys)
    found = f"the split files' paths under {image_root}" if image_root else ""
    sources: dict[str, Path] = {}
    if image_root is not None:
        sources = {k: image_root / k for k in keys}
    elif d.task == "stanford_cars":
        sources, found = cars_from_devkit_release(raw, keys)
    if not sources:
        return TaskResult(d.task, "failed", f"{d.task}: none of the folders under --raw {raw} holds the images "
                          f"its split files list (e.g. {keys[0]} relative to the image folder); extract "
                          f"{d.archive} under {raw}")
    missing = [k for k in keys if not sources[k].is_file()]
    if missing:
        return TaskResult(d.task, "failed", f"{d.task}: {len(missing)} of {len(keys)} images the split files "
                          f"list are missing under {image_root or raw}, e.g. {', '.join(missing[:3])}; "
                          f"re-extract {d.archive}")
    log(f"{d.task}: found {found}")
    images = staging / d.image_dir if d.image_dir else staging
    for i, k in enumerate(keys, 1):
        _place(sources[k], images / k, copy)
        if progress is not None and (i % 500 == 0 or i == len(keys)):
            progress(d.task, "images", i, len(keys))
    for s in SPLIT_FILES:
        shutil.copyfile(split_dir / f"{s}.json", staging / f"{s}.json")
    write_manifest(staging / MANIFEST, _manifest(d, staging, splits, progress))
    info = {"task": d.task, "source": "official archives + VPT splits", "splits_from": str(split_dir),
            "images_from": found, "linked": not copy, "splits": {s: len(splits[s]) for s in SPLIT_FILES}}
    atomic_text(staging / BUILD_INFO, json.dumps(info, indent=2, sort_keys=True) + "\n")
    publish(staging, final)
    result = TaskResult(d.task, "built", f"{final}", len(keys), folder_bytes(final), time.perf_counter() - t0)
    result.notes.append(f"images from {found}")
    return result


def build(raw: Path, splits_root: Path, out: Path, tasks: list[str], copy: bool = False,
          progress=None, log=print) -> list[TaskResult]:
    from ..suite import load_suite

    for flag, path in (("--raw", raw), ("--splits", splits_root)):
        if not path.is_dir():
            raise UserError(f"{flag} {path} is not a folder")
    suite = load_suite("fgvc")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in tasks:
        task = suite.task(name)
        try:
            results.append(build_dataset(dataset_row(task.name), raw, splits_root, out, copy,
                                         (task.name, *task.aliases), progress, log))
        except UserError as exc:  # this dataset's problem: report it, build the others
            results.append(TaskResult(task.name, "failed", str(exc)))
    return results
