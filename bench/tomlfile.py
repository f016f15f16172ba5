"""TOML reading on every Python the project supports: the standard library's `tomllib` from
3.11, the `tomli` package (a declared dependency there) on 3.10."""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str) -> dict:
    return tomllib.loads(text)
