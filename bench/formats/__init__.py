"""Data formats: how a task's splits are laid out on disk. One file each in this folder,
registered by name; a suite names its format (`format = "vtab1k-folder"`).

A format reads one split of one task folder into (image path, label) pairs. A new format is one
file here (or a plugin) with a class decorated `@register_format(name)` that implements
`DataFormat.read_split`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import DataError
from ..registry import Registry


@dataclass
class SplitItems:
    task: str
    split: str
    items: list[tuple[Path, int]]
    source: str  # the split file(s), for messages
    bad_lines: list[str] = field(default_factory=list)


class DataFormat:
    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""   # the expected layout, for messages ("expected ...")

    def read_split(self, task, folder: Path, split: str, strict: bool = True) -> SplitItems:
        """The (image path, label) pairs of one split of the task in `folder`. `strict`: a
        malformed entry is an error (else it is kept in `bad_lines` for `bench data check`)."""
        raise NotImplementedError


FORMATS: Registry[type[DataFormat]] = Registry("data format", "bench.formats", "peftbench.formats")


register_format = FORMATS.register_class  # the class decorator: @register_format(name)


def read_text(path: Path) -> str:
    """A split file's text; a file that is not UTF-8 is one error naming it and the place."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the file as "
                        "UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
