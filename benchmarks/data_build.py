"""What `bench data build vtab1k` writes: disk and encoding time per task, estimated from measured
PNG and JPEG encodings of natural photographs at each task's typical image size.

    python benchmarks/data_build.py

Measured here: bytes and seconds per image of the build's encoder, PNG (the default) and JPEG (PIL quality 75, as
NOAH's script) on scikit-image's sample photographs resized to each task's size (dSprites: binary
shapes). Assumed (printed as such): the typical image size per task, and the TFDS split sizes of
VTAB's test splits. Not measured here (no network): TFDS's download and prepare time, which
dominates a real build (the download sizes printed come from TFDS's own checksum files).
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

# task: (test images, typical height x width, 1-channel?) -- sizes are typical, not exact
TASKS = {
    "cifar": (10000, (32, 32)), "caltech101": (6084, (200, 300)), "dtd": (1880, (450, 500)),
    "oxford_flowers102": (6149, (500, 667)), "oxford_iiit_pet": (3669, (400, 500)),
    "svhn": (26032, (32, 32)), "sun397": (21750, (300, 400)), "patch_camelyon": (32768, (96, 96)),
    "eurosat": (5400, (64, 64)), "resisc45": (6300, (256, 256)),
    "diabetic_retinopathy": (42670, (600, 600)), "clevr_count": (15000, (320, 480)),
    "clevr_dist": (15000, (320, 480)), "dmlab": (22735, (360, 480)), "kitti": (711, (375, 1242)),
    "dsprites_loc": (73728, (64, 64)), "dsprites_ori": (73728, (64, 64)),
    "smallnorb_azi": (12150, (96, 96)), "smallnorb_ele": (12150, (96, 96)),
}
# GiB TFDS downloads per dataset (its checksum files; Retinopathy and RESISC45 by hand)
DOWNLOADS = {"cifar": 0.16, "caltech101": 0.25, "dtd": 0.58, "oxford_flowers102": 0.32,
             "oxford_iiit_pet": 0.76, "svhn": 1.47, "sun397": 36.41, "patch_camelyon": 7.48,
             "eurosat": 0.09, "resisc45": 0.4, "diabetic_retinopathy": 88.0, "clevr_count": 17.72,
             "dmlab": 2.81, "kitti": 11.71, "dsprites_loc": 0.03, "smallnorb_azi": 0.24}


def photos() -> list[np.ndarray]:
    from skimage import data

    return [np.asarray(getattr(data, n)())[..., :3] for n in ("astronaut", "coffee", "chelsea", "rocket")]


def sample(task: str, size: tuple[int, int], pics: list[np.ndarray], rng) -> np.ndarray:
    h, w = size
    if task.startswith("dsprites"):
        a = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2, 2)
        a[y:y + h // 4, x:x + w // 3] = 255
        return np.repeat(a[:, :, None], 3, axis=2)
    pic = pics[int(rng.integers(len(pics)))]
    img = np.asarray(Image.fromarray(pic).resize((w, h), Image.BICUBIC))
    if task.startswith("smallnorb"):
        img = np.repeat(img.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    return img


def measure(img: np.ndarray, fmt: str, repeat: int = 3) -> tuple[int, float]:
    """Bytes and seconds of the build's own encoder (bench.databuild.staging.encode)."""
    from bench.databuild.staging import encode

    best, size = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        size = len(encode(img, fmt))
        best = min(best, time.perf_counter() - t0)
    return size, best


def main() -> None:
    rng = np.random.default_rng(0)
    pics = photos()
    print(f"{'task':22s} {'images':>7s} {'size':>9s} {'PNG GiB':>8s} {'JPEG GiB':>8s} {'PNG s':>7s} {'TFDS GiB':>8s}")
    totals = np.zeros(4)
    for task, (n_test, size) in TASKS.items():
        n = 1000 + n_test  # train800 + val200 images, and the test split (train800val200 reuses them)
        png = [measure(sample(task, size, pics, rng), "png") for _ in range(4)]
        jpg = [measure(sample(task, size, pics, rng), "jpeg") for _ in range(4)]
        png_gib = n * np.mean([b for b, _ in png]) / 2**30
        jpg_gib = n * np.mean([b for b, _ in jpg]) / 2**30
        png_s = n * np.mean([s for _, s in png])
        dl = DOWNLOADS.get(task, 0.0)
        totals += (n, png_gib, jpg_gib, png_s)
        print(f"{task:22s} {n:7d} {size[0]:>4d}x{size[1]:<4d} {png_gib:8.2f} {jpg_gib:8.2f} {png_s:7.0f} "
              f"{dl if dl else '(shared)':>8}")
    print(f"{'total':22s} {int(totals[0]):7d} {'':9s} {totals[1]:8.2f} {totals[2]:8.2f} {totals[3]:7.0f} "
          f"{sum(DOWNLOADS.values()):8.1f}")
    print("PNG s: one core's PNG encoding time; the build spreads it over --workers threads and adds "
          "TFDS's decoding of each image and the hashing")


if __name__ == "__main__":
    main()
