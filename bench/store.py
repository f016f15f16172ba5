"""The results store: one JSON record per run, written atomically, keyed by the spec's hash.

Layout under the results root:
    <suite>/<method>/<task>/<run_id>.json    the run record (status ok or failed)
    <suite>/<method>/<task>/<run_id>.lock    held (flock) by the process running it, if any
    <suite>/<method>/<task>/<run_id>.ckpt    the epoch checkpoint of an unfinished run
    <suite>/_plans/<plan_id>.json            what a `bench run` invocation asked for
    _submissions/<id>/                       one SLURM/submitit submission: manifest and job logs

Per-run files need no shared index, so concurrent writers (two shells, a SLURM array on NFS)
cannot lose each other's results; a record appears whole or not at all (temp file + rename).
A run is claimed with an advisory lock that the kernel drops when its process dies, even by
SIGKILL, so a killed run is simply pending again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

SPEC_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    suite: str
    task: str
    method: str
    seed: int
    stage: str
    backbone: str
    checkpoint: str | None
    image_size: int
    hparams: dict[str, Any] = field(hash=False)
    # Fields added after the first records were written. Each has the value every earlier run
    # had implicitly, and is left out of the run id while it has that value: a record written
    # before the field existed keeps its id and is still recognised as done.
    normalize: str = "backbone"      # backbone | imagenet | none: the mean/std images are normalised with
    interpolation: str = "bicubic"   # bicubic | bilinear: how images are resized

    @property
    def run_id(self) -> str:
        blob = json.dumps({"v": SPEC_VERSION, **self._identity()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _identity(self) -> dict[str, Any]:
        d = asdict(self)
        for name, value in _LATER_FIELDS.items():
            if d[name] == value:
                del d[name]
        return d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d or k not in _LATER_FIELDS})


_LATER_FIELDS = {"normalize": "backbone", "interpolation": "bicubic"}


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def cell_dir(self, spec: RunSpec) -> Path:
        return self.root / spec.suite / spec.method / spec.task

    def record_path(self, spec: RunSpec) -> Path:
        return self.cell_dir(spec) / f"{spec.run_id}.json"

    def read(self, spec: RunSpec) -> dict | None:
        return read_json(self.record_path(spec))

    def is_ok(self, spec: RunSpec) -> bool:
        rec = self.read(spec)
        return rec is not None and rec.get("status") == "ok"

    def checkpoint_path(self, spec: RunSpec) -> Path:
        return self.cell_dir(spec) / f"{spec.run_id}.ckpt"

    def write(self, spec: RunSpec, record: dict) -> Path:
        """Write the record; the run's checkpoint has served its purpose and goes."""
        path = self.record_path(spec)
        write_json_atomic(path, record)
        self.checkpoint_path(spec).unlink(missing_ok=True)
        return path

    def claim(self, spec: RunSpec) -> "RunLock | None":
        """The run's lock, or None while another live process holds it."""
        return RunLock.acquire(self.cell_dir(spec) / f"{spec.run_id}.lock")

    def is_running(self, spec: RunSpec) -> bool:
        return RunLock.is_held(self.cell_dir(spec) / f"{spec.run_id}.lock")

    def records(self, suite: str | None = None) -> Iterator[dict]:
        pattern = f"{suite or '*'}/*/*/*.json"
        for path in sorted(self.root.glob(pattern)):
            if path.name.startswith("."):
                continue
            rec = read_json(path)
            if rec is not None:
                rec["_path"] = str(path)
                yield rec

    def save_plan(self, suite: str, specs: list[RunSpec]) -> Path:
        ids = sorted(s.run_id for s in specs)
        plan_id = hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
        path = self.root / suite / "_plans" / f"{plan_id}.json"
        if not path.exists():
            write_json_atomic(path, {"plan_id": plan_id, "specs": [s.to_dict() for s in specs]})
        return path

    def planned_specs(self, suite: str | None = None) -> list[RunSpec]:
        specs: dict[str, RunSpec] = {}
        for path in sorted(self.root.glob(f"{suite or '*'}/_plans/*.json")):
            plan = read_json(path) or {}
            for d in plan.get("specs", []):
                spec = RunSpec.from_dict(d)
                specs.setdefault(spec.run_id, spec)
        return list(specs.values())

    def suites(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


class RunLock:
    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path) -> "RunLock | None":
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return None
                raise
            # The holder before us may have unlinked the file after we opened it; then we hold a
            # lock nobody else can see, so start again on the file now at that path.
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    os.ftruncate(fd, 0)
                    os.write(fd, json.dumps({"pid": os.getpid(), "host": os.uname().nodename}).encode())
                    return cls(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)

    @staticmethod
    def is_held(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self, remove: bool = True) -> None:
        if self.fd < 0:
            return
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self.fd)  # closing drops the flock
        self.fd = -1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
