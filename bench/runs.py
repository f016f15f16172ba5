"""One spec run and recorded, and a list of specs run one after another where the work is
claimed: what the local executor does in this process and what an array task does on a node.

A run is claimed with its lock first, so two processes on one results root (two shells, two
array tasks) never run the same spec; a run that is done is skipped. `force_since` (a time)
makes a run whose ok record started before it count as not done: `--force` reruns each run
once, even when two `--force` invocations race.
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .spec import RunSpec
from .store import Store, now
from .suite import Suite


@dataclass
class Outcome:
    ran: list[RunSpec] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)
    busy: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)

    def merge(self, other: "Outcome") -> None:
        for name in ("ran", "skipped", "busy", "failed"):
            getattr(self, name).extend(getattr(other, name))


def is_done(store: Store, spec: RunSpec, force_since: str | None = None) -> bool:
    """An ok record exists (and, under `--force`, was started by this wave of runs)."""
    rec = store.read(spec)
    if rec is None or rec.get("status") != "ok":
        return False
    if force_since is None:
        return True
    try:
        return datetime.fromisoformat(rec.get("started_at", "")) >= datetime.fromisoformat(force_since)
    except (TypeError, ValueError):
        return False


def save_weights(path: Path, state: dict) -> Path:
    """The trained state as safetensors, written to a temporary file and renamed, so a reader
    never sees half of it."""
    import os

    from safetensors.torch import save_file

    from .store import file_mode

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(tmp))
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    return path


def selection_rule(spec: RunSpec, suite: Suite, protocol: str) -> dict[str, str | None]:
    """How this run's number was chosen, as its record states it: always the top-1 after the last
    epoch; hyperparameters given (the suite's and --set), or one point of the tune grid (the tune
    stage), or selected on the tune stage's evaluation split (the final stage of --protocol vtab)."""
    tune_eval = suite.splits["tune"][1] if "tune" in suite.splits else None
    if spec.stage == "tune" and protocol == "vtab":
        hparams, on = "grid point", None
    elif protocol == "vtab":
        hparams, on = "selected", tune_eval
    else:
        hparams, on = "given", None
    return {"epoch": "last", "hparams": hparams, "selected_on": on}


def execute_spec(spec: RunSpec, suite: Suite, data_root: Path, store: Store, opts,
                 record_user_errors: bool = False, job: dict | None = None) -> dict:
    """Run one spec and write its record (ok, or failed with the error); returns the record.

    The run resumes from its epoch checkpoint if an earlier attempt left one. Bad input
    (`UserError`, e.g. an unreadable image) is not a result of the run: at a terminal it
    propagates and no record is written; in a batch job (`record_user_errors`) nobody is there
    to read it, so it becomes a failed record that `bench status --failed` shows.
    """
    from . import engine  # torch-heavy: imported when a run really starts
    from .backbones import weights_identity
    from .measure import environment

    record: dict[str, Any] = {"run_id": spec.run_id, "spec": spec.to_dict(), "started_at": now()}
    if job:
        record["job"] = job
    opts = dataclasses.replace(opts, checkpoint_path=store.checkpoint_path(spec))
    try:
        out = engine.run(spec, suite, data_root, opts)
    except UserError as exc:
        if not record_user_errors:
            raise
        record.update(status="failed", error=f"bad input: {exc}", traceback=None)
    except Exception as exc:  # noqa: BLE001 - any failure of the run itself becomes its record
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=20))
    else:
        state = out.pop("trainable_state", None)
        if state is not None:
            record["weights_file"] = save_weights(store.weights_path(spec), state).name
        record.update(status="ok", error=None, **out)
    record["finished_at"] = now()
    record["selection"] = selection_rule(spec, suite, opts.protocol)
    record["weights"] = weights_identity(spec.backbone, spec.checkpoint)
    record["env"] = environment(opts.device)
    store.write(spec, record)
    return record


def run_specs(specs: list[RunSpec], suite: Suite, data_root: Path, store: Store, opts,
              force_since: str | None = None, on_done: Callable[[RunSpec, dict | None], None] | None = None,
              record_user_errors: bool = False, job: dict | None = None) -> Outcome:
    """Run specs one after another in this process; skip those done or running elsewhere."""
    outcome = Outcome()
    for spec in specs:
        record = None
        if is_done(store, spec, force_since):
            outcome.skipped.append(spec)
        else:
            lock = store.claim(spec)
            if lock is None:
                outcome.busy.append(spec)
            else:
                with lock:
                    if is_done(store, spec, force_since):  # another process finished it meanwhile
                        outcome.skipped.append(spec)
                    else:
                        record = execute_spec(spec, suite, data_root, store, opts,
                                              record_user_errors=record_user_errors, job=job)
                        outcome.ran.append(spec)
                        if record["status"] != "ok":
                            outcome.failed.append((spec, record["error"]))
        if on_done:
            on_done(spec, record)
    return outcome
