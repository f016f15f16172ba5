"""VTAB-1k from TensorFlow Datasets: the 19 tasks as VTAB's task_adaptation code defines them.

One row per task (`TASKS`): which TFDS dataset, config and version; where val200 and test come
from; which feature is the label (or which rule makes it); how a 1-channel image becomes RGB.
The facts are read from google-research/task_adaptation (task_adaptation/data/*.py) and the
task arguments from its scripts/run_all_tasks.sh (the ones NOAH's get_vtab1k.py uses too):

- every task: train800 = train[:800]; train800val200 = train800 followed by val200;
- val200 = the first 200 images of a TFDS split from an offset: `val=("train", 90)` is
  train[k:k+200] with k = 90 * N_train // 100 (task_adaptation's own train/val cut),
  `val=("validation",)` is validation[:200];
- test: a TFDS split ("test", "validation", "test[50%:]"), or `("train", 60, 20)`: train from
  60*N//100 + 20*N//100 on (EuroSAT, RESISC45, dSprites keep only a train split in TFDS).

Where a row cannot be VTAB's exactly, its `note` says why; `bench data build` prints it and
writes it into the task's build.json.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from .manifest import pixel_sha256
from .staging import TaskResult, TaskWriter, built_info, folder_bytes, refuse_foreign

SPLITS = ("train800", "val200", "train800val200", "test")


@dataclass(frozen=True)
class VtabTask:
    name: str                          # the task folder (suites/vtab1k.toml)
    tfds: str                          # TFDS "dataset[/config]:version" as task_adaptation asks
    val: tuple                         # (TFDS split, *percents of it summed as the offset)
    test: str | tuple                  # a TFDS split string, or (TFDS split, *percents): split[offset:]
    label: str = "label"               # the label feature
    bins: tuple[int, int] | None = None  # (classes in TFDS, classes kept): label // (in / kept)
    rule: str = ""                     # a label rule of LABEL_RULES instead of a feature
    image: str = "rgb"                 # rgb | grey (1 channel tiled to 3) | binary (0/1 -> 0/255, tiled)
    note: str = ""                     # where this row differs from VTAB's definition, and why

    @property
    def dataset(self) -> str:
        return self.tfds.split(":")[0].split("/")[0]


TASKS: tuple[VtabTask, ...] = (
    VtabTask("cifar", "cifar100:3.*.*", val=("train", 90), test="test"),
    VtabTask("caltech101", "caltech101:3.*.*", val=("train", 90), test="test"),
    VtabTask("dtd", "dtd:3.*.*", val=("validation",), test="test"),
    VtabTask("oxford_flowers102", "oxford_flowers102:2.*.*", val=("validation",), test="test"),
    VtabTask("oxford_iiit_pet", "oxford_iiit_pet:4.*.*", val=("train", 80), test="test",
             note="VTAB read oxford_iiit_pet 3.*.*, which TFDS 4.9 no longer builds; version 4.0.0 "
                  "'fixed corrupt images' (TFDS release notes), so a few images may differ"),
    VtabTask("svhn", "svhn_cropped:3.*.*", val=("train", 90), test="test"),
    VtabTask("sun397", "sun397/tfds:4.*.*", val=("validation",), test="test"),
    VtabTask("patch_camelyon", "patch_camelyon:2.*.*", val=("validation",), test="test"),
    VtabTask("eurosat", "eurosat/rgb:2.*.*", val=("train", 60), test=("train", 60, 20)),
    VtabTask("resisc45", "resisc45:3.*.*", val=("train", 60), test=("train", 60, 20)),
    VtabTask("diabetic_retinopathy", "diabetic_retinopathy_detection/btgraham-300:3.*.*",
             val=("validation",), test="test"),
    VtabTask("clevr_count", "clevr:3.*.*", val=("train", 90), test="validation", rule="clevr_count"),
    VtabTask("clevr_dist", "clevr:3.*.*", val=("train", 90), test="validation",
             rule="clevr_closest_object_distance"),
    VtabTask("dmlab", "dmlab:2.0.1", val=("validation",), test="test"),
    VtabTask("kitti", "kitti:3.1.0", val=("validation",), test="test",
             rule="kitti_closest_vehicle_distance"),
    VtabTask("dsprites_loc", "dsprites:2.*.*", val=("train", 80), test=("train", 80, 10),
             label="label_x_position", bins=(32, 16), image="binary"),
    VtabTask("dsprites_ori", "dsprites:2.*.*", val=("train", 80), test=("train", 80, 10),
             label="label_orientation", bins=(40, 16), image="binary"),
    VtabTask("smallnorb_azi", "smallnorb:2.*.*", val=("test",), test="test[50%:]",
             label="label_azimuth", image="grey"),
    VtabTask("smallnorb_ele", "smallnorb:2.*.*", val=("test",), test="test[50%:]",
             label="label_elevation", image="grey"),
)


def task_row(name: str) -> VtabTask:
    for t in TASKS:
        if t.name == name:
            return t
    raise UserError(f"no VTAB-1k build row for task {name!r}; rows: {', '.join(t.name for t in TASKS)}")


# ---------------------------------------------------------------------------------- labels
def _bucket(value: float, thresholds: tuple[float, ...]) -> int:
    """The index of the last threshold strictly below `value` (task_adaptation's
    `reduce_max(where(thresholds - value < 0))`)."""
    below = [i for i, t in enumerate(thresholds) if t < value]
    if not below:
        raise ValueError(f"{value} is not above the first threshold {thresholds[0]}")
    return below[-1]


def clevr_count(ex: dict) -> int:
    """Number of objects (3..10) minus 3: 8 classes."""
    return len(ex["objects"]["size"]) - 3


def clevr_closest_object_distance(ex: dict) -> int:
    """Depth of the closest object (the smallest pixel_coords z), in 6 bins."""
    dist = float(np.min(ex["objects"]["pixel_coords"][:, 2]))
    return _bucket(dist, (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0))


def kitti_closest_vehicle_distance(ex: dict) -> int:
    """Distance (location z, metres) of the closest Car, Van or Truck (types 0-2), in 3 bins,
    plus class 3 for no vehicle (task_adaptation appends a vehicle at 1000 m)."""
    objects = ex["objects"]
    z = np.asarray(objects["location"], dtype=np.float32).reshape(-1, 3)[:, 2]
    vehicles = z[np.asarray(objects["type"]) < 3]
    dist = float(min(np.min(vehicles), np.float32(1000.0))) if vehicles.size else 1000.0
    return _bucket(dist, (-100.0, 8.0, 20.0, 999.0))


LABEL_RULES = {f.__name__: f for f in (clevr_count, clevr_closest_object_distance,
                                        kitti_closest_vehicle_distance)}


def label_of(task: VtabTask, ex: dict) -> int:
    if task.rule:
        return LABEL_RULES[task.rule](ex)
    value = int(ex[task.label])
    if task.bins:
        original, kept = task.bins
        # float32 floor division, as task_adaptation's tf.math.floordiv on a float32 cast
        return int(np.floor(np.float32(value) / np.float32(original / kept)))
    return value


def rgb_of(task: VtabTask, image: np.ndarray) -> np.ndarray:
    """The image as VTAB's preprocessing hands it on: (H, W, 3) uint8."""
    if task.image == "rgb":
        return image
    tiled = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    return tiled * np.uint8(255) if task.image == "binary" else tiled


# ---------------------------------------------------------------------------------- splits
def _offset(split: str, percents: tuple, counts: dict[str, int]) -> int:
    if split not in counts:
        raise UserError(f"TFDS has no split {split!r} here (it has {', '.join(counts) or 'none'})")
    return sum(p * counts[split] // 100 for p in percents)


def split_strings(task: VtabTask, counts: dict[str, int]) -> dict[str, str]:
    """The TFDS split strings of the four VTAB-1k splits, given the TFDS splits' sizes."""
    val_split, *val_pct = task.val
    start = _offset(val_split, tuple(val_pct), counts)
    val = f"{val_split}[{start}:{start + 200}]" if start else f"{val_split}[:200]"
    if isinstance(task.test, tuple):
        test_split, *test_pct = task.test
        test = f"{test_split}[{_offset(test_split, tuple(test_pct), counts)}:]"
    else:
        test = task.test
    return {"train800": "train[:800]", "val200": val, "train800val200": f"train[:800]+{val}",
            "test": test}


# ---------------------------------------------------------------------------------- manual downloads
@dataclass(frozen=True)
class ManualDownload:
    needs: tuple[str, ...]   # what must be in the manual folder (a trailing / is a folder)
    source: str
    how: str


MANUAL = {
    "diabetic_retinopathy_detection": ManualDownload(
        needs=("train/", "test/", "sample/", "trainLabels.csv"),
        source="Kaggle's Diabetic Retinopathy Detection competition, "
               "https://www.kaggle.com/c/diabetic-retinopathy-detection/data (sign in and accept "
               "the competition's rules; about 88 GB): train.zip.001-005, test.zip.001-007, "
               "sample.zip, trainLabels.csv.zip",
        how="join and unzip the parts (`cat train.zip.* > train.zip && unzip train.zip`, the "
            "same for test), so that the folder holds train/*.jpeg, test/*.jpeg, sample/*.jpeg and "
            "trainLabels.csv; TFDS downloads the test labels itself"),
    "resisc45": ManualDownload(
        needs=("NWPU-RESISC45/",),
        source="the authors' OneDrive, https://1drv.ms/u/s!AmgKYzARBl5ca3HNaHIlzp_IXjs "
               "(NWPU-RESISC45.rar, about 0.4 GB)",
        how="extract the archive (`unrar x NWPU-RESISC45.rar`) so that the folder holds "
            "NWPU-RESISC45/<class>/<image>.jpg"),
}


def missing_manual_files(task: VtabTask, manual_dir: Path) -> list[str]:
    need = MANUAL.get(task.dataset)
    if need is None:
        return []
    missing = []
    for item in need.needs:
        path = manual_dir / item.rstrip("/")
        ok = (path.is_dir() and any(path.iterdir())) if item.endswith("/") else path.is_file()
        if not ok:
            missing.append(item)
    return missing


def manual_message(task: VtabTask, manual_dir: Path, missing: list[str]) -> str:
    need = MANUAL[task.dataset]
    return (f"{task.name}: TFDS cannot download {task.dataset}; place it by hand, then run the same "
            f"command again.\n  missing in {manual_dir}: {', '.join(missing)}\n  from: {need.source}"
            f"\n  how: {need.how}")


# ---------------------------------------------------------------------------------- TFDS
DATA_EXTRA = ("tensorflow", "tensorflow_datasets", "cv2", "h5py", "importlib_resources")
PIP_NAMES = {"tensorflow": "tensorflow-cpu", "tensorflow_datasets": "tensorflow-datasets",
             "cv2": "opencv-python-headless", "h5py": "h5py", "importlib_resources": "importlib_resources"}


def require_tfds():
    """tensorflow_datasets, imported quietly on the CPU; a clear error naming what to install."""
    missing = [m for m in DATA_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            "bench data build vtab1k reads TensorFlow Datasets, and "
            f"{', '.join(PIP_NAMES[m] for m in missing)} {'is' if len(missing) == 1 else 'are'} not "
            "installed: pip install -e \".[data]\" (in a clone of peftbench) or "
            "pip install \"peftbench[data]\"; that extra is tensorflow-cpu, tensorflow-datasets, "
            "opencv-python-headless (KITTI, SUN397, Retinopathy), h5py (dSprites, PatchCamelyon) and "
            "importlib_resources (TFDS's downloader)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    # absl hooks the root logger with a handler bound to the sys.stderr of this moment, which
    # may be a stand-in (rich's progress display redirects it) that is closed later; the
    # process's own stderr stays valid for every later log line of any library
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
    try:
        tf.config.set_visible_devices([], "GPU")  # decoding images needs no GPU memory
    except RuntimeError:
        pass
    return tfds


def default_tfds_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def url_files(builder) -> list[tuple[str, int, str]]:
    """(url, bytes, file name) of what TFDS downloads for a dataset (its checksum files)."""
    infos = builder.url_infos or {}
    return [(url, info.size, info.filename or url.rsplit("/", 1)[-1]) for url, info in sorted(infos.items())]


def _download_help(builder, manual_dir: Path) -> str:
    try:
        files = url_files(builder)
    except Exception:  # noqa: BLE001 - help text only; the failure itself is already reported
        files = []
    if not files:
        return ""
    lines = [f"  {url} -> {manual_dir / name} ({size / 2**20:,.0f} MiB)" for url, size, name in files]
    return ("\n  if the site is down, fetch these files by other means and place them as shown "
            "(TFDS uses a file of that name in the manual folder instead of downloading it):\n"
            + "\n".join(lines))


def _examples(tfds, builder, task: VtabTask, split: str):
    # one file at a time, so images come in TFDS's example order: a split's list is the same
    # whatever TFDS's default interleaving (16 files at once since TFDS 4) and its manifest
    # indices are the TFDS indices from the split's start
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(interleave_cycle_length=1))
    for ex in tfds.as_numpy(ds):
        yield rgb_of(task, ex["image"]), label_of(task, ex)


def _size(builder, split: str) -> int | None:
    try:
        return builder.info.splits[split].num_examples
    except Exception:  # noqa: BLE001 - only for the progress bar's total
        return None


def build_task(tfds, task: VtabTask, out: Path, tfds_dir: Path, fmt: str, workers: int,
               progress=None, log=print) -> TaskResult:
    t0 = time.perf_counter()
    writer = TaskWriter(out, task.name, fmt, workers)
    refuse_foreign(writer.final)
    built = built_info(writer.final)
    if built is not None:
        if built.get("format") != fmt:
            return TaskResult(task.name, "failed", f"{writer.final} was built as {built.get('format')}; "
                              f"move it away or pass another --out to build it as {fmt}")
        return TaskResult(task.name, "present", f"already built ({built.get('tfds', '')})",
                          images=sum(v for k, v in built.get("splits", {}).items() if k != "train800val200"))
    builder = tfds.builder(task.tfds, data_dir=str(tfds_dir))
    manual_dir = tfds_dir / "downloads" / "manual"
    if not builder.is_prepared():
        missing = missing_manual_files(task, manual_dir)
        if missing:
            return TaskResult(task.name, "manual", manual_message(task, manual_dir, missing))
        try:
            log(f"{task.name}: downloading and preparing {builder.name} {builder.version} with TFDS "
                f"into {tfds_dir} (once per dataset)")
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
        except Exception as exc:  # noqa: BLE001 - any TFDS failure: name it, build the other tasks
            return TaskResult(task.name, "failed", f"TFDS could not prepare {task.tfds}: "
                              f"{type(exc).__name__}: {str(exc).strip()[:600]}"
                              + _download_help(builder, manual_dir))
    counts = {name: s.num_examples for name, s in builder.info.splits.items()}
    splits = split_strings(task, counts)
    info = {"task": task.name, "source": "tfds", "tfds": f"{builder.name}"
            + (f"/{builder.builder_config.name}" if builder.builder_config else "")
            + f":{builder.version}", "tfds_splits": splits, "tfds_split_sizes": counts,
            "tensorflow_datasets": tfds.__version__, "label": task.rule or task.label,
            "note": task.note, "peftbench": __version__}
    resumed = writer.start({k: info[k] for k in ("tfds", "tfds_splits", "label")} | {"format": fmt})
    if resumed:
        log(f"{task.name}: resuming an interrupted build in {writer.staging}")
    for split in ("train800", "val200", "test"):
        if not writer.split_done(split):
            writer.write_split(split, _examples(tfds, builder, task, splits[split]),
                               _size(builder, splits[split]) or 0, progress)
    if not writer.split_done("train800val200"):
        combined = writer.combine("train800val200", ["train800", "val200"])
        # VTAB reads train800val200 as one TFDS split: check it is the two others, in order
        for i, (rgb, label) in enumerate(_examples(tfds, builder, task, splits["train800val200"])):
            e = combined[i] if i < len(combined) else None
            if e is None or e.label != label or (fmt == "png" and e.sha256 != pixel_sha256(rgb)):
                raise UserError(f"{task.name}: TFDS's {splits['train800val200']} is not train800 "
                                f"followed by val200 at image {i}; report this with your TFDS version")
    final = writer.finish(list(SPLITS), info)
    images = sum(len(writer.entries[s]) for s in ("train800", "val200", "test"))
    result = TaskResult(task.name, "built", f"{info['tfds']} -> {final}", images, folder_bytes(final),
                        time.perf_counter() - t0)
    if task.note:
        result.notes.append(task.note)
    small = {s: len(writer.entries[s]) for s, n in (("train800", 800), ("val200", 200))
             if len(writer.entries[s]) != n}
    if small:
        result.notes.append(f"split sizes {small} are not VTAB's 800/200: the TFDS splits are smaller "
                            f"({counts})")
    return result


def build(out: Path, task_names: list[str], tfds_dir: Path | None, fmt: str, workers: int = 2,
          progress=None, log=print) -> list[TaskResult]:
    tfds = require_tfds()
    tfds_dir = (tfds_dir or default_tfds_dir()).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    manual_dir = tfds_dir / "downloads" / "manual"
    for name in task_names:  # say at once what needs hands, not after hours of building the rest
        task = task_row(name)
        if task.dataset in MANUAL and not (out / name / "build.json").is_file():
            missing = missing_manual_files(task, manual_dir)
            if missing and not tfds.builder(task.tfds, data_dir=str(tfds_dir)).is_prepared():
                log(f"[yellow]{name} needs files placed by hand ({', '.join(missing)} in {manual_dir}); "
                    "the other tasks are built meanwhile, the steps follow at the end[/]")
    results = []
    for name in task_names:
        try:
            results.append(build_task(tfds, task_row(name), out, tfds_dir, fmt, workers, progress, log))
        except UserError as exc:  # this task's problem: report it, build the others
            results.append(TaskResult(name, "failed", str(exc)))
    return results
