"""The results store: one JSON record per run, written atomically, keyed by the spec's run id.

Layout under the results root:
    <suite>/<method>/<task>/<run_id>.json    the run record (status ok or failed)
    <suite>/<method>/<task>/<run_id>.lock    held (flock) by the process running it, if any
    <suite>/<method>/<task>/<run_id>.ckpt    the epoch checkpoint of an unfinished run
    <suite>/<method>/<task>/superseded/      records a `--force` rerun replaced, kept
    <suite>/_plans/<plan_id>.json            what a `bench run` invocation asked for
    <suite>/_force/<time>.wave               a `--force` wave, flocked by the commands in it
    _submissions/<id>/                       one SLURM/submitit submission: manifest and job logs

Per-run files need no shared index, so concurrent writers (two shells, a SLURM array on NFS)
cannot lose each other's results; a record appears whole or not at all (temp file + rename).
A run is claimed with an advisory lock that the kernel drops when its process dies, even by
SIGKILL, so a killed run is simply pending again. Files are created with the user's umask, so
a labmate sharing the results root can read them.

Reading never fails on one bad file: a record or plan that cannot be read is skipped and named
in `Store.problems`, for the command to report.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .errors import UserError
from .names import check_name
from .spec import RunSpec

def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class RecordWriteError(UserError):
    """A finished run's record could not be written; the message says where its result is."""


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.problems: list[str] = []  # unreadable files met while reading, one line each
        self.existed = self.root.exists()

    def remove_empty_folders(self, suite: str) -> None:
        """Remove the folders a refused command made and left empty (and the root, if this store
        made it), so that bad input leaves the results root as it found it."""
        top = self.root / suite
        if top.is_dir():
            for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    folder.rmdir()
                except OSError:
                    pass
            try:
                top.rmdir()
            except OSError:
                pass
        if not self.existed:
            try:
                self.root.rmdir()
            except OSError:
                pass

    # ---------------------------------------------------------------------- paths
    def cell_dir(self, spec: RunSpec) -> Path:
        for value, what in ((spec.suite, "suite name"), (spec.method, "method name"), (spec.task, "task name")):
            check_name(value, what, "results store")
        path = self.root / spec.suite / spec.method / spec.task
        root = self.root.resolve()
        if root not in path.resolve().parents:  # a symlinked folder leading out of the root
            raise UserError(f"results store: {path} lies outside the results root {root}")
        return path

    def record_path(self, spec: RunSpec) -> Path:
        return self.cell_dir(spec) / f"{spec.run_id}.json"

    def checkpoint_path(self, spec: RunSpec) -> Path:
        return self.cell_dir(spec) / f"{spec.run_id}.ckpt"

    def weights_path(self, spec: RunSpec) -> Path:
        """The trainable state `bench run --keep-weights` keeps beside the run's record."""
        return self.cell_dir(spec) / f"{spec.run_id}.safetensors"

    def lock_path(self, spec: RunSpec) -> Path:
        return self.cell_dir(spec) / f"{spec.run_id}.lock"

    # -------------------------------------------------------------------- checks
    def check_writable(self, what: str = "--results") -> None:
        """One clear error unless records can be written under the root: a file is tried there
        (and removed, with any folder made for it), so a read-only file system is found too."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UserError(f"{what} {root} is a file, not a folder; pass a folder for the results")
        made = []
        probe = root
        while not probe.exists():
            made.append(probe)
            probe = probe.parent
        try:
            for folder in reversed(made):
                folder.mkdir()
            fd, tmp = tempfile.mkstemp(dir=root, prefix=".peftbench-probe-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise UserError(f"{what} {root}: cannot write there ({exc.strerror or exc}); pass a folder "
                            "you can write to") from None
        finally:
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:
                    pass

    # -------------------------------------------------------------------- records
    def read(self, spec: RunSpec) -> dict | None:
        """The run's record, or None. A record written before run ids covered the splits,
        format and precision counts when it is this very run (`RunSpec.accepts_v1_record`)."""
        rec = self._read_record(self.record_path(spec))
        if rec is not None or spec.splits is None:
            return rec
        old = self._read_record(self.cell_dir(spec) / f"{spec.v1_run_id}.json")
        return old if old is not None and spec.accepts_v1_record(old) else None

    def is_ok(self, spec: RunSpec) -> bool:
        rec = self.read(spec)
        return rec is not None and rec.get("status") == "ok"

    def write(self, spec: RunSpec, record: dict) -> Path:
        """Write the record; an earlier ok record of the run moves to `superseded/`, and the
        run's checkpoint has served its purpose and goes. If the write fails (a full disk, a
        read-only root), the record goes to the temp folder instead and the checkpoint stays:
        the error says where both are."""
        path = self.record_path(spec)
        previous = self.read(spec)
        try:
            if previous is not None and previous.get("status") == "ok" and "_path" in previous:
                self._supersede(Path(previous["_path"]))
            write_json_atomic(path, record)
        except OSError as exc:
            rescue = Path(tempfile.gettempdir()) / "peftbench-unsaved" / f"{spec.run_id}.json"
            try:
                write_json_atomic(rescue, {**record, "_meant_for": str(path)})
                where = f"it was saved to {rescue} instead: move it to {path} once that is possible"
            except OSError:
                where = "it could not be saved elsewhere either"
            ckpt = self.checkpoint_path(spec)
            kept = f"; the run's last epoch checkpoint {ckpt} was kept" if ckpt.exists() else ""
            raise RecordWriteError(f"could not write the record of {spec.method}/{spec.task} seed {spec.seed} "
                                   f"to {path} ({exc.strerror or exc}); {where}{kept}") from None
        self.checkpoint_path(spec).unlink(missing_ok=True)
        return path

    def _supersede(self, path: Path) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = path.parent / "superseded" / f"{path.stem}.{stamp}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)

    def _read_record(self, path: Path) -> dict | None:
        """A record, with `_path`; None if absent; a malformed one is a problem, and None."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problem(path, f"unreadable ({exc.strerror or exc})")
            return None
        why = None
        try:
            rec = json.loads(raw.decode("utf-8"))
            why = record_problem(rec)
        except UnicodeDecodeError:
            why = "not UTF-8 text"
        except json.JSONDecodeError as exc:
            why = f"not complete JSON ({exc.msg} at line {exc.lineno}); a crash may have cut it"
        if why:
            self._problem(path, why)
            return None
        rec["_path"] = str(path)
        return rec

    def _problem(self, path: Path, why: str) -> None:
        line = f"{path}: {why}; skipped"
        if line not in self.problems:
            self.problems.append(line)

    def records(self, suite: str | None = None) -> Iterator[dict]:
        pattern = f"{suite or '*'}/*/*/*.json"
        for path in sorted(self.root.glob(pattern)):
            if path.name.startswith(".") or path.parts[-4].startswith("_"):
                continue
            rec = self._read_record(path)
            if rec is not None:
                yield rec

    # ---------------------------------------------------------------------- locks
    def claim(self, spec: RunSpec) -> "RunLock | None":
        """The run's lock, or None while another live process holds it."""
        return RunLock.acquire(self.lock_path(spec))

    def is_running(self, spec: RunSpec) -> bool:
        return RunLock.is_held(self.lock_path(spec))

    # ---------------------------------------------------------------------- --force waves
    @contextmanager
    def force_wave(self, suite: str, since: str) -> Iterator[str]:
        """The start time of the `--force` wave this command belongs to, held while it runs.

        `--force` reruns every run whose ok record started before the wave did. A second
        `--force` command started while the first is still running joins its wave (it takes the
        first one's start time), so the two share the reruns instead of each redoing what the
        other just finished; once no command of a wave is alive, the next `--force` starts a new
        one. Members hold a shared flock on the wave's file; choosing or starting a wave happens
        under an exclusive lock on the folder, so two commands cannot start two waves at once.
        """
        check_name(suite, "suite name", "results store")
        folder = self.root / suite / "_force"
        folder.mkdir(parents=True, exist_ok=True)
        select = os.open(folder / ".select", os.O_RDWR | os.O_CREAT, 0o666)
        member = -1
        try:
            fcntl.flock(select, fcntl.LOCK_EX)
            for wave in sorted(folder.glob("*.wave")):
                fd = os.open(wave, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # a live command holds it: join this wave
                    try:
                        joined = wave.read_text(encoding="utf-8").strip()
                        datetime.fromisoformat(joined)
                    except (OSError, ValueError):
                        os.close(fd)
                        continue
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    member, since = fd, joined
                    break
                wave.unlink(missing_ok=True)  # nobody holds it any more
                os.close(fd)
            if member < 0:
                path = folder / f"{since.replace(':', '-').replace('+', 'p')}-{os.getpid()}.wave"
                member = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
                os.write(member, since.encode())
                fcntl.flock(member, fcntl.LOCK_SH)
        finally:
            os.close(select)  # drops the folder's lock
        try:
            yield since
        finally:
            os.close(member)

    # ---------------------------------------------------------------------- plans
    def save_plan(self, suite: str, specs: list[RunSpec]) -> Path | None:
        """Record what an invocation asked for; returns the plan's path if this call wrote it."""
        check_name(suite, "suite name", "results store")
        ids = sorted(s.run_id for s in specs)
        plan_id = hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
        path = self.root / suite / "_plans" / f"{plan_id}.json"
        if path.exists():
            return None
        write_json_atomic(path, {"plan_id": plan_id, "specs": [s.to_dict() for s in specs]})
        return path

    def planned_specs(self, suite: str | None = None) -> list[RunSpec]:
        specs: dict[str, RunSpec] = {}
        for path in sorted(self.root.glob(f"{suite or '*'}/_plans/*.json")):
            try:
                plan = json.loads(path.read_text(encoding="utf-8"))
                entries = plan["specs"]
                parsed = [RunSpec.from_dict(d) for d in entries]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                self._problem(path, f"not a readable plan ({type(exc).__name__}: {exc})")
                continue
            for spec in parsed:
                specs.setdefault(spec.run_id, spec)
        return list(specs.values())

    def suites(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def record_problem(rec) -> str | None:
    """Why `rec` is not a usable run record, or None."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not a run record"
    if rec.get("status") not in ("ok", "failed"):
        return f"status {rec.get('status')!r} is neither ok nor failed"
    try:
        spec = RunSpec.from_dict(rec.get("spec"))
    except (ValueError, TypeError) as exc:
        return f"its spec is not readable ({exc})"
    run_id = rec.get("run_id")
    if run_id != spec.run_id and run_id != spec.v1_run_id:  # the old id only when the new one differs
        return f"its run_id {run_id!r} does not match its spec"
    if rec["status"] == "ok":
        top1 = (rec.get("metrics") or {}).get("top1") if isinstance(rec.get("metrics"), dict) else None
        if isinstance(top1, bool) or not isinstance(top1, (int, float)):
            return f"an ok record whose top1 is {top1!r}, not a number"
    return None


class RunLock:
    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path) -> "RunLock | None":
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
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
                    try:  # who holds it, for people reading the file; the flock is the lock
                        os.ftruncate(fd, 0)
                        os.write(fd, json.dumps({"pid": os.getpid(), "host": os.uname().nodename}).encode())
                    except OSError:
                        pass
                    return cls(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)

    @staticmethod
    def is_held(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
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
    """A JSON object from a file of ours (a manifest), or None when absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def file_mode() -> int:
    """The mode of a file the user creates (0666 less the umask): what records and kept weights
    get, so a labmate sharing the results root can read them (mkstemp alone would leave 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: Path, data: dict) -> None:
    """Write through a temp file and rename, with the permissions of any file the user creates
    (mkstemp alone would leave 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
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
