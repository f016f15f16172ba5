"""Every registry of the project, loaded together (a plugin may extend any of them)."""

from __future__ import annotations

import importlib

REGISTRIES = {
    "method": ("bench.method", "METHODS"),
    "data format": ("bench.formats", "FORMATS"),
    "data source": ("bench.sources", "SOURCES"),
    "executor": ("bench.executors", "EXECUTORS"),
    "report writer": ("bench.reports", "WRITERS"),
}


def registries():
    return {kind: getattr(importlib.import_module(module), name) for kind, (module, name) in REGISTRIES.items()}


def load_all() -> None:
    for registry in registries().values():
        registry.load()
