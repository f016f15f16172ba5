"""Data sources: code that writes a suite's data on disk in one of the formats, so that the
reader a real dataset goes through reads it too. One file each in this folder, registered by
name; a suite names its source (`source = "demo"`), and `bench run` prepares it when no
`--data-root` holds the data already.

A new source is one file here (or a plugin) with a class decorated `@register_source(name)`
that implements `DataSource.prepare`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar

from ..errors import UserError
from ..registry import Registry


class DataSource:
    name: ClassVar[str] = ""
    format: ClassVar[str] = ""        # the data format it writes

    def default_root(self) -> Path:
        raise NotImplementedError

    def prepare(self, root: Path | None, progress: Callable[[str, int, int], None] | None = None) -> Path:
        """Write the data under `root` (default: `default_root()`) unless it is there already;
        returns the root. `progress(what, done, total)` is called as it goes."""
        raise NotImplementedError

    @staticmethod
    def check_root(root: Path) -> Path:
        if root.exists() and not root.is_dir():
            raise UserError(f"--data-root {root} is a file; the data is written into a folder: pass a "
                            "folder (or leave --data-root out to use the cache)")
        return root


SOURCES: Registry[type[DataSource]] = Registry("data source", "bench.sources", "peftbench.sources")


register_source = SOURCES.register_class  # the class decorator: @register_source(name)
