"""One generic registry behind every extension point: methods, data formats, data sources,
executors and report writers.

A registry maps names (and aliases) to items. Built-in items live one file each in a package
(`methods/` installed as `bench.methods`, `bench/formats/`, `bench/executors/`, ...) and
register themselves when imported; third-party items register through an entry-point group
(`peftbench.methods`, ...) or a file passed with `--plugin path/to/file.py`. Built-ins always
load first, so a plugin that reuses a built-in name is the one told so.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> items of one kind, with aliases, built-ins, entry points and plugins."""

    def __init__(self, kind: str, package: str, group: str, hint: str = ""):
        self.kind = kind            # "method", "data format", ... (for messages)
        self.hint = hint            # appended to the unknown-name error
        self.package = package      # where the built-in items live, one module each
        self.group = group          # the entry-point group of third-party items
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._origin: dict[str, str] = {}
        self._loaded = False
        self._loading = False

    # ------------------------------------------------------------------ registering
    def add(self, name: str, item: T, aliases: tuple[str, ...] = (), origin: str = "") -> T:
        """Register `item` under `name` and `aliases`; a name taken by another item is an error
        that names both sides."""
        if not self._loading:
            self.load()  # built-ins first: a clash is then always the newcomer's
        for key in (name, *aliases):
            owner = self._aliases.get(key.lower())
            if owner is not None and self._origin[owner] != origin:
                raise UserError(f"{origin or 'a plugin'} registers {self.kind} {key!r}, which "
                                f"{self._origin[owner]} already registers; choose another name")
        self._items[name] = item
        self._origin[name] = origin
        for key in (name, *aliases):
            self._aliases[key.lower()] = name
        return item

    def register_class(self, name: str, aliases: tuple[str, ...] = ()):
        """A class decorator that registers the class under `name` (and sets its `name`)."""
        def wrap(cls):
            cls.name = name
            self.add(name, cls, aliases, origin=origin_of(cls))
            return cls
        return wrap

    # --------------------------------------------------------------------- looking up
    def get(self, name: str) -> T:
        self.load()
        canonical = self._aliases.get(name.lower())
        if canonical is None:
            raise UserError(f"unknown {self.kind} {name!r}; registered {self.kind}s: "
                            f"{', '.join(self.names())}{self.hint}")
        return self._items[canonical]

    def canonical(self, name: str) -> str:
        self.get(name)
        return self._aliases[name.lower()]

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def items(self) -> dict[str, T]:
        self.load()
        return dict(sorted(self._items.items()))

    def __contains__(self, name: str) -> bool:
        self.load()
        return name.lower() in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # ----------------------------------------------------------------------- loading
    def load(self) -> None:
        """Import the built-in modules, then the entry points (once)."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            package = importlib.import_module(self.package)
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
            for ep in entry_points(group=self.group):
                try:
                    ep.load()
                except UserError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a broken plugin must say which it is
                    raise UserError(f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to load: "
                                    f"{type(exc).__name__}: {exc}") from None
            self._loaded = True
        finally:
            self._loading = False

    @contextlib.contextmanager
    def scratch(self):
        """Everything registered inside the block is forgotten after it (for tests)."""
        self.load()
        saved = (dict(self._items), dict(self._aliases), dict(self._origin))
        try:
            yield self
        finally:
            self._items, self._aliases, self._origin = saved


def load_plugin(path: str) -> None:
    """Import a Python file that registers methods, formats, executors or writers."""
    from . import extensions  # noqa: F401 - every registry loads its built-ins before the plugin

    extensions.load_all()
    file = Path(path).expanduser()
    if not file.is_file() or file.suffix != ".py":
        raise UserError(f"--plugin {path}: not a Python file; pass the path of a .py file that "
                        "registers a method (bench.registry.register_method) or another extension")
    mod_name = f"peftbench_plugin_{file.stem}"
    if mod_name in sys.modules and getattr(sys.modules[mod_name], "__file__", None) == str(file.resolve()):
        return  # the same file again (a job that loads its plugins twice)
    spec = importlib.util.spec_from_file_location(mod_name, file.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except UserError as exc:
        del sys.modules[mod_name]
        raise UserError(f"--plugin {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        del sys.modules[mod_name]
        raise UserError(f"--plugin {path} failed to import: {type(exc).__name__}: {exc}") from None


def origin_of(fn: Callable) -> str:
    """Where a registered object was defined, for messages: a module, or a plugin file."""
    module = sys.modules.get(fn.__module__)
    file = getattr(module, "__file__", None)
    if fn.__module__.startswith("peftbench_plugin_") and file:
        return f"plugin {file}"
    return fn.__module__


# The decorators plugin authors use, importable from here (`from bench.registry import
# register_method`); each lives beside the kind of object it registers.
_DECORATORS = {
    "register_method": "bench.method",
    "register_format": "bench.formats",
    "register_source": "bench.sources",
    "register_executor": "bench.executors",
    "register_writer": "bench.reports",
}


def __getattr__(name: str):
    if name in _DECORATORS:
        return getattr(importlib.import_module(_DECORATORS[name]), name)
    raise AttributeError(f"module 'bench.registry' has no attribute {name!r}")
