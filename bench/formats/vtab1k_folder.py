"""`vtab1k-folder`: the VTAB-1k layout NOAH's get_vtab1k.py writes, which most PEFT code reads.

    <root>/<task>/{train800,val200,train800val200,test}.txt   lines: images/<split>/<file> <0-based label>
    <root>/<task>/images/...
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from . import DataFormat, SplitItems, read_text, register_format

SPLITS = ("train800", "val200", "train800val200", "test")


@register_format("vtab1k-folder")
class VTAB1kFolder(DataFormat):
    layout = ("expected the VTAB-1k layout written by NOAH's get_vtab1k.py: "
              "<data-root>/<task>/{train800,val200,train800val200,test}.txt, each line "
              "'images/<split>/<file> <label>', images under <data-root>/<task>/images/")

    def read_split(self, task, folder: Path, split: str, strict: bool = True) -> SplitItems:
        path = folder / f"{split}.txt"
        if not path.is_file():
            raise DataError(f"task {task.name!r}: split file {path} not found; expected one of "
                            f"{', '.join(s + '.txt' for s in SPLITS)} in {folder}")
        items, bad = [], []
        for lineno, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            try:
                rel, label = parts[0], int(parts[1])
            except (IndexError, ValueError):
                bad.append(f"{path}:{lineno}: expected '<image path> <integer label>', got {line!r}")
                continue
            items.append((folder / rel, label))
        if bad and strict:
            raise DataError(bad[0] + (f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""))
        return SplitItems(task.name, split, items, str(path), bad)
