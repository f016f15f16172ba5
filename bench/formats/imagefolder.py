"""`imagefolder`: torchvision's ImageFolder layout, per task.

    <root>/<task>/<split>/<class name>/<image>

Labels are the class folders' sorted order over all of the task's splits, so every split maps a
class name to the same label (as ImageFolder does within one split).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from . import DataFormat, SplitItems, register_format

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def classes(folder: Path) -> list[str]:
    """The class names of a task: the class folders found in any of its split folders."""
    return sorted({c.name for split_dir in _folders(folder) for c in _folders(split_dir)})


@register_format("imagefolder")
class ImageFolder(DataFormat):
    layout = ("expected torchvision's ImageFolder layout per task: "
              "<data-root>/<task>/<split>/<class name>/<image>, the same class folders in every split")

    def read_split(self, task, folder: Path, split: str, strict: bool = True) -> SplitItems:
        split_dir = folder / split
        if not split_dir.is_dir():
            present = [p.name for p in _folders(folder)]
            raise DataError(f"task {task.name!r}: split folder {split_dir} not found (split folders there: "
                            f"{', '.join(present) or 'none'}); expected <task>/{split}/<class>/<image>")
        label = {name: i for i, name in enumerate(classes(folder))}
        items = []
        for class_dir in _folders(split_dir):
            for path in sorted(class_dir.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    items.append((path, label[class_dir.name]))
        return SplitItems(task.name, split, items, str(split_dir))
