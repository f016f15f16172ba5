"""Where peftbench keeps files of its own outside the results root."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$PEFTBENCH_CACHE`, else `$XDG_CACHE_HOME/peftbench`, else `~/.cache/peftbench`."""
    if os.environ.get("PEFTBENCH_CACHE"):
        return Path(os.environ["PEFTBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "peftbench"
