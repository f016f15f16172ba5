"""Names that become folders (suite, method and task names) must be safe path components."""

from __future__ import annotations

import re

from .errors import UserError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str, what: str, where: str) -> str:
    """`name` if it is a safe path component: letters, digits, `-`, `_`, `.`, starting with a
    letter or digit (so not empty, not `..`, no separators); else one error saying so."""
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise UserError(f"{where}: {what} {name!r} cannot name a folder: use letters, digits, '-', '_' "
                        "and '.', starting with a letter or digit")
    return name
