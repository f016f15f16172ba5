"""Decoding an image file to 8-bit RGB, as every reader of images here does (training, `bench data
check`, manifests). PIL and NumPy only: the data build imports it beside TensorFlow, which must
not load torch's compiler stack after it (loading Triton's library after TensorFlow's crashes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """The image as 8-bit RGB, and how it was converted where that loses or changes something
    (None for RGB, and for greyscale or a palette without transparency, which convert exactly).

    PIL's own `convert("RGB")` clips a 16-bit greyscale image to its lowest 8 bits (72 grey
    levels become 2), so those are scaled to 8 bits first."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in SIXTEEN_BIT:
        pixels = np.asarray(img, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
        grey = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
        return grey.convert("RGB"), f"{mode} (16-bit greyscale) scaled to 8 bits (/257), then RGB"
    if mode == "F":
        pixels = np.asarray(img, dtype=np.float64)
        grey = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
        return grey.convert("RGB"), "F (32-bit float) rounded and clipped to 0..255, then RGB"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        return img.convert("RGB"), f"{mode} with transparency: the alpha channel was dropped"
    if mode == "CMYK":
        return img.convert("RGB"), "CMYK converted to RGB without a colour profile"
    if mode in ("L", "1", "P"):
        return img.convert("RGB"), None
    return img.convert("RGB"), f"{mode} converted to RGB"


def open_image(path: Path) -> tuple[Image.Image, str | None]:
    """The image as RGB, and how it was converted (see `to_rgb`); a missing or unreadable file
    (a decompression bomb too) is a `DataError` naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"unreadable image {path}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {exc}") from None


def load_image(path: Path) -> Image.Image:
    return open_image(path)[0]
