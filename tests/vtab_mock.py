"""TFDS's own mock (`tfds.testing.mock_data`) serving crafted VTAB-1k sources, for the build tests.

TFDS's mock ignores split slicing and knows no split sizes, so the tests give it both:
- `write_metadata` writes each dataset's dataset_info.json with small split sizes (TFDS's mock
  reads "the true metadata files" from its data_dir), so `builder.info.splits` has sizes and
  TFDS's own `ReadInstruction` turns "train[45:245]" into absolute ranges;
- `fake_as_dataset` (TFDS's `as_dataset_fn` hook) yields one crafted example per absolute index:
  the same example for the same (dataset, split, index), with label features that cycle through
  every class, so counts, label ranges and the label rules can be checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TFDS split sizes, small but shaped like the real ones: 90/80/60% cuts leave a full val200
SIZES = {
    "cifar100": {"train": 2250, "test": 40},
    "caltech101": {"train": 2250, "test": 40},
    "dtd": {"train": 820, "validation": 210, "test": 40},
    "oxford_flowers102": {"train": 820, "validation": 210, "test": 40},
    "oxford_iiit_pet": {"train": 2100, "test": 40},
    "svhn_cropped": {"train": 2250, "test": 40},
    "sun397": {"train": 820, "validation": 210, "test": 40},
    "patch_camelyon": {"train": 820, "validation": 210, "test": 40},
    "eurosat": {"train": 1450},
    "resisc45": {"train": 1450},
    "diabetic_retinopathy_detection": {"train": 820, "validation": 210, "test": 40},
    "clevr": {"train": 2250, "validation": 40},
    "dmlab": {"train": 820, "validation": 210, "test": 40},
    "kitti": {"train": 820, "validation": 210, "test": 40},
    "dsprites": {"train": 2400},
    "smallnorb": {"train": 820, "test": 400},
}
CLASSES = {"cifar100": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102,
           "oxford_iiit_pet": 37, "svhn_cropped": 10, "sun397": 397, "patch_camelyon": 2,
           "eurosat": 10, "resisc45": 45, "diabetic_retinopathy_detection": 5, "dmlab": 6}
# the closest object's depth per class of clevr_dist, and the closest vehicle's distance (or none)
# per class of kitti
CLEVR_DEPTHS = (5.0, 8.25, 8.75, 9.25, 9.75, 12.0)
KITTI_VEHICLE_Z = (5.0, 15.0, 30.0, None)
# how many examples the slow mock yields before it waits (for the kill-and-resume test)
SLOW_AFTER = int(os.environ.get("VTAB_MOCK_SLOW_AFTER", "0") or 0)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(repr(key).encode()).hexdigest()[:12], 16))


def example(dataset: str, split: str, i: int) -> dict:
    rng = _rng(dataset, split, i)
    if dataset == "dsprites":
        return {"image": rng.integers(0, 2, (64, 64, 1), dtype=np.uint8),
                "label_x_position": np.int64(i % 32), "label_orientation": np.int64(i % 40)}
    if dataset == "smallnorb":
        return {"image": rng.integers(0, 256, (96, 96, 1), dtype=np.uint8),
                "label_azimuth": np.int64(i % 18), "label_elevation": np.int64(i % 9)}
    if dataset not in ("clevr", "kitti"):
        return {"image": rng.integers(0, 256, (10, 11, 3), dtype=np.uint8),
                "label": np.int64(i % CLASSES[dataset])}
    image = rng.integers(0, 256, (9 + i % 4, 11, 3), dtype=np.uint8)   # images of several sizes
    if dataset == "clevr":
        n = 3 + i % 8                                   # 3..10 objects: clevr_count's 8 classes
        z = np.full((n, 3), 20.0, dtype=np.float32)
        z[i % n, 2] = CLEVR_DEPTHS[i % 6]               # the closest object
        return {"image": image, "objects": {"size": np.zeros(n, np.int64), "pixel_coords": z}}
    if dataset == "kitti":
        want = KITTI_VEHICLE_Z[i % 4]
        types = np.array([3, 0, 1], np.int64)            # a pedestrian, a car, a van
        loc = np.array([[0, 0, 2.0], [0, 0, 50.0], [0, 0, 60.0]], np.float32)
        if want is None:
            types, loc = types[:1], loc[:1]              # only the pedestrian: no vehicle
        else:
            loc[2, 2] = want
        return {"image": image, "objects": {"type": types, "location": loc}}


def _signature(tf, ex):
    if isinstance(ex, dict):
        return {k: _signature(tf, v) for k, v in ex.items()}
    a = np.asarray(ex)
    return tf.TensorSpec(shape=[None] * a.ndim, dtype=tf.as_dtype(a.dtype))


def fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    ranges = tfds.core.ReadInstruction.from_spec(str(split)).to_absolute(dict(self.info.splits.items()))
    dataset = self.name

    def indices():
        for r in ranges:
            end = r.to if r.to is not None else self.info.splits[r.splitname].num_examples
            for i in range(r.from_ or 0, end):
                yield r.splitname, i

    if dataset not in ("clevr", "kitti") and not SLOW_AFTER:
        # fixed shapes: one tensor per feature, far faster through tf.data than a generator
        examples = [example(dataset, split_name, i) for split_name, i in indices()]
        return tf.data.Dataset.from_tensor_slices({k: np.stack([ex[k] for ex in examples])
                                                   for k in examples[0]})

    def gen():
        for done, (split_name, i) in enumerate(indices(), 1):
            if SLOW_AFTER and done > SLOW_AFTER:
                import time
                time.sleep(0.05)
            yield example(dataset, split_name, i)

    return tf.data.Dataset.from_generator(gen, output_signature=_signature(tf, example(dataset, "train", 0)))


def write_metadata(meta_dir: Path) -> Path:
    """dataset_info.json with SIZES for every TFDS dataset the VTAB-1k rows name."""
    import tensorflow_datasets as tfds

    from bench.databuild.vtab1k import TASKS

    for tfds_name in dict.fromkeys(t.tfds for t in TASKS):
        builder = tfds.builder(tfds_name, data_dir=str(meta_dir))
        sizes = SIZES[builder.name]
        builder.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s, n in sizes.items()]))
        Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
        builder.info.write_to_directory(builder.data_dir)
    return meta_dir


@contextlib.contextmanager
def mocked_tfds(meta_dir: Path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(meta_dir),
                                as_dataset_fn=fake_as_dataset):
        yield
