"""The run-status rules, in one place: what a planned run is (ok, failed, running, queued,
pending) given its record, its lock and the state of the job it was submitted in.

`bench status`, `bench run --wait`'s live table and the submission of what is left all ask
here. Records come first: a job's state (from SLURM's accounting, or a local process) only
explains a run that has no ok record.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import RunSpec
from .store import Store

STATES = ("ok", "failed", "running", "queued", "pending")

# SLURM states in which a job may still run (submitit's own list of unfinished states, plus the
# requeue and transition states a preempted job passes through), and a local process alive.
ACTIVE_STATES = {"READY", "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                 "COMPLETING", "CONFIGURING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED", "ALIVE"}


@dataclass
class JobState:
    """The latest job a run was submitted in."""
    job_id: str
    state: str                # SLURM's word (PENDING, RUNNING, CANCELLED, ...) or ALIVE/EXITED locally
    stderr: str | None        # its log
    submission: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def known(self) -> bool:
        return self.state != "UNKNOWN"


def run_state(store: Store, spec: RunSpec, record: dict | None, job: JobState | None) -> tuple[str, str | None]:
    """(ok | failed | running | queued | pending, why) for one planned run."""
    if record is not None and record.get("status") == "ok":
        return "ok", None
    if job is not None and job.known and not job.active:
        # The job ended: a run without an ok record failed, even while its dying process still
        # holds the lock (SLURM reports CANCELLED seconds before it kills the process).
        if record is not None:
            return "failed", record.get("error")
        return "failed", f"job {job.job_id} ended {job.state} before the run wrote a record"
    if store.is_running(spec) or (job is not None and job.state == "RUNNING"):
        return "running", None
    if job is not None and job.active:
        return "queued", None
    if record is not None:
        return "failed", record.get("error")
    return "pending", None


@dataclass
class RunStatus:
    spec: RunSpec
    state: str
    why: str | None
    record: dict | None
    job: JobState | None


def job_states(store: Store, suite: str | None = None) -> dict[str, JobState]:
    """run_id -> the state of the latest job any submission of the results root put it in, asked
    of the executor that made each submission."""
    from .executors import EXECUTORS
    from .executors.submitit import submissions

    manifests = submissions(store, suite)
    latest: dict[str, str] = {}
    for manifest in manifests:
        for job in manifest["jobs"]:
            for run_id in job["run_ids"]:
                latest[run_id] = manifest["id"]
    out: dict[str, JobState] = {}
    for name in dict.fromkeys(m.get("executor") for m in manifests):
        if name not in EXECUTORS:
            store.problems.append(f"submissions of executor {name!r}, which is not registered here; skipped")
            continue
        states = EXECUTORS.get(name).job_states(store, [m for m in manifests if m.get("executor") == name])
        out.update({rid: st for rid, st in states.items() if latest.get(rid) == st.submission})
    return out


def suite_status(store: Store, suite: str) -> list[RunStatus]:
    """Every run of a suite the results root knows of (planned or recorded), with its state."""
    planned = {s.run_id: s for s in store.planned_specs(suite)}
    jobs = job_states(store, suite)
    out, seen = [], set()
    for run_id, spec in planned.items():
        rec = store.read(spec)
        if rec is not None:
            seen.add(rec["_path"])
        out.append(RunStatus(spec, *run_state(store, spec, rec, jobs.get(run_id)), rec, jobs.get(run_id)))
    for rec in store.records(suite):
        if rec["_path"] in seen:
            continue
        spec = RunSpec.from_dict(rec["spec"])
        job = jobs.get(spec.run_id)
        out.append(RunStatus(spec, *run_state(store, spec, rec, job), rec, job))
    return out
