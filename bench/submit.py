"""Runs as submitit job arrays: on SLURM (`--executor slurm`) or as local subprocesses
(`--executor submitit-local`), and what the results root knows about them afterwards.

One `bench run` invocation submits one array of the runs that are not ok and not already
queued. Each array task runs a chunk of runs one after another; the job function is a
`submitit.helpers.Checkpointable`, so on preemption or at its time limit submitit requeues it
and the interrupted run resumes from its epoch checkpoint (see `bench.engine`).

Every submission gets a folder `<results>/_submissions/<id>/` holding submitit's job files
and logs and `submission.json`, the manifest that maps each array task to its runs. Run
status is always read from the records first; SLURM's job states (through submitit, which
asks `sacct`) only explain the runs that have no record yet.
"""

from __future__ import annotations

import os
import shutil
import signal
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from .errors import UserError
from .store import RunSpec, Store, read_json, write_json_atomic

EXECUTORS = ("local", "slurm", "submitit-local")
# SLURM states in which a job may still run (submitit's own list of unfinished states, plus
# the requeue and transition states a preempted job passes through).
ACTIVE_STATES = {"READY", "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                 "COMPLETING", "CONFIGURING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


# ------------------------------------------------------------------------------------ options
@dataclass
class SlurmOptions:
    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 2
    mem: str | None = None           # SLURM's --mem, e.g. 32G
    time: int = 240                  # minutes per array task
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    chunk: int = 1

    def executor_parameters(self, kind: str, name: str) -> dict[str, Any]:
        """submitit's `update_parameters` arguments for this executor."""
        params: dict[str, Any] = {"name": name, "timeout_min": self.time, "cpus_per_task": self.cpus_per_job}
        if kind == "slurm":
            params.update(gpus_per_node=self.gpus_per_job, slurm_array_parallelism=self.array_parallelism)
            for key in ("partition", "mem", "account", "qos", "constraint"):
                if getattr(self, key):
                    params[f"slurm_{key}"] = getattr(self, key)
            if self.extra:
                params["slurm_additional_parameters"] = dict(self.extra)
        return params


_INT_OPTIONS = {"gpus_per_job": 0, "cpus_per_job": 1, "time": 1, "array_parallelism": 1, "chunk": 1}


def user_config_path(explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"--config {explicit}: no such file")
        return path
    env = os.environ.get("PEFTBENCH_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise UserError(f"$PEFTBENCH_CONFIG={env}: no such file")
        return path
    path = Path("~/.config/peftbench/config.toml").expanduser()
    return path if path.is_file() else None


def slurm_options(config: Path | None, cli: dict[str, Any]) -> SlurmOptions:
    """Defaults, then the config file's `[slurm]` section, then the command line."""
    opts = SlurmOptions()
    known = set(SlurmOptions.__dataclass_fields__)
    if config is not None:
        try:
            section = tomllib.loads(config.read_text()).get("slurm", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{config}: not valid TOML ({exc})") from None
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in known:
                raise UserError(f"{config} [slurm]: unknown key {key!r}; known: "
                                f"{', '.join(sorted(known))}")
            if name == "extra":
                if not isinstance(value, dict):
                    raise UserError(f"{config} [slurm]: extra must be a table, e.g. extra = {{ exclusive = \"\" }}")
                value = {str(k): str(v) for k, v in value.items()}
            setattr(opts, name, value)
    for name, value in cli.items():
        if value is None:
            continue
        if name == "extra":
            opts.extra.update(value)
        else:
            setattr(opts, name, value)
    for name, least in _INT_OPTIONS.items():
        value = getattr(opts, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            where = f"--{name.replace('_', '-')} or [slurm] {name}"
            raise UserError(f"{where}: expected an integer of at least {least}, got {value!r}")
    return opts


def parse_extra(items: list[str] | None) -> dict[str, str] | None:
    """`--slurm-extra key=value` -> submitit's slurm_additional_parameters."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-extra {item!r}: expected key=value, e.g. --slurm-extra exclusive= "
                            "or --slurm-extra mail-type=END")
        out[key.strip().replace("-", "_")] = value
    return out


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm needs SLURM's sbatch, and there is none on PATH here; run "
                        "`bench run` on a SLURM login node, or use --executor local (this process) or "
                        "--executor submitit-local (parallel processes on this machine)")


# ---------------------------------------------------------------------------------- job side
@dataclass
class RunContext:
    """What an array task needs to rebuild its runs away from the submitting process."""
    suite_path: str
    data_root: str
    results: str
    plugins: list[str]
    device: str
    threads: int | None
    checkpoint_interval: float
    precision: str = "auto"
    compile: bool = False


class RunsFailed(RuntimeError):
    """Raised at the end of an array task whose runs did not all succeed (after all were tried)."""


class ArrayTask(submitit.helpers.Checkpointable):
    """Runs a chunk of specs; requeued on preemption, resuming each run from its checkpoint."""

    def __call__(self, ctx: RunContext, specs: list[dict]) -> dict[str, str]:
        import torch

        from .backbones import set_threads
        from .engine import EngineOptions
        from .launch import execute_spec
        from .registry import load_plugin
        from .suite import load_suite

        for plugin in ctx.plugins:
            load_plugin(plugin)
        suite = load_suite(ctx.suite_path)
        set_threads(ctx.threads)
        device = torch.device(ctx.device if ctx.device != "auto" else
                              ("cuda" if torch.cuda.is_available() else "cpu"))
        store = Store(ctx.results)
        opts = EngineOptions(device=device, checkpoint_interval=ctx.checkpoint_interval,
                             precision=ctx.precision, compile=ctx.compile)
        env = submitit.JobEnvironment()
        job = {"job_id": env.job_id, "stdout": str(env.paths.stdout), "stderr": str(env.paths.stderr),
               "host": env.hostname}
        statuses: dict[str, str] = {}
        for d in specs:
            spec = RunSpec.from_dict(d)
            if store.is_ok(spec):
                statuses[spec.run_id] = "ok"
                continue
            lock = store.claim(spec)
            if lock is None:
                statuses[spec.run_id] = "running elsewhere"
                continue
            with lock:
                record = execute_spec(spec, suite, Path(ctx.data_root), store, opts,
                                      record_user_errors=True, job=job)
            statuses[spec.run_id] = record["status"]
            print(f"{record['status']}: {spec.stage} {spec.method}/{spec.task} seed {spec.seed} "
                  f"-> {store.record_path(spec)}" + (f" ({record['error']})" if record["error"] else ""),
                  flush=True)
        failed = [rid for rid, st in statuses.items() if st == "failed"]
        if failed:
            # The job fails so that SLURM's accounting shows it; the records hold the errors.
            raise RunsFailed(f"{len(failed)} of {len(specs)} runs failed: {', '.join(failed)}; "
                             "`bench status --failed` shows their errors")
        return statuses


# ------------------------------------------------------------------------------ submit side
@dataclass
class Submission:
    id: str
    folder: Path
    executor: str
    suite: str
    jobs: list[Any]                  # submitit Job objects (only in the submitting process)
    manifest: dict[str, Any]


def _executor(kind: str, folder: Path) -> submitit.AutoExecutor:
    return submitit.AutoExecutor(folder=folder, cluster="slurm" if kind == "slurm" else "local")


def chunked(specs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    return [specs[i:i + size] for i in range(0, len(specs), size)]


def submit(specs: list[RunSpec], ctx: RunContext, kind: str, options: SlurmOptions, store: Store,
           suite: str, command: str) -> Submission:
    """Submit `specs` as one array (one `map_array` call) and write its manifest."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    sub_id = f"{stamp}-{suite}-{os.urandom(3).hex()}"
    folder = (store.root / "_submissions" / sub_id).resolve()
    size = options.chunk
    if kind == "submitit-local":
        # submitit's local executor starts every array task at once: chunk so that no more
        # processes run than --array-parallelism (or the cores, divided by each job's threads).
        cores = len(os.sched_getaffinity(0))
        parallel = min(options.array_parallelism, max(1, cores // max(1, options.cpus_per_job)))
        size = max(size, -(-len(specs) // parallel))
    chunks = chunked(specs, size)
    executor = _executor(kind, folder)
    executor.update_parameters(**options.executor_parameters(kind, f"peftbench-{suite}"))
    try:
        jobs = executor.map_array(ArrayTask(), [ctx] * len(chunks), [[s.to_dict() for s in c] for c in chunks])
    except Exception as exc:  # noqa: BLE001 - sbatch's refusal, word for word
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # leave no trace of a refused first submission
        except OSError:
            pass
        raise UserError(f"the cluster refused the array ({len(chunks)} tasks): {exc}".strip()) from None
    manifest = {
        "id": sub_id, "suite": suite, "executor": kind, "created": stamp, "command": command,
        "folder": str(folder), "parameters": asdict(options),
        "jobs": [{"job_id": job.job_id, "run_ids": [s.run_id for s in c]} for job, c in zip(jobs, chunks)],
    }
    write_json_atomic(folder / "submission.json", manifest)
    return Submission(sub_id, folder, kind, suite, jobs, manifest)


def submissions(store: Store, suite: str | None = None) -> list[dict]:
    """Manifests of the results root, oldest first."""
    out = []
    for path in sorted((store.root / "_submissions").glob("*/submission.json")):
        manifest = read_json(path)
        if manifest and (suite is None or manifest.get("suite") == suite):
            out.append(manifest)
    return out


@dataclass
class JobState:
    job_id: str
    state: str                # SLURM's word (PENDING, RUNNING, CANCELLED, ...) or ALIVE/EXITED locally
    stderr: Path
    submission: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES or self.state == "ALIVE"


def _local_alive(pid: str) -> bool:
    """A submitit-local job is a process; alive if that pid still runs submitit's job runner."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"submitit" in cmdline


def job_states(store: Store, suite: str | None = None) -> dict[str, JobState]:
    """run_id -> the state of the latest job submitted for it (one `sacct` call for all)."""
    latest: dict[str, tuple[dict, str]] = {}
    for manifest in submissions(store, suite):
        for job in manifest["jobs"]:
            for run_id in job["run_ids"]:
                latest[run_id] = (manifest, job["job_id"])
    slurm_jobs = {}
    for manifest, job_id in latest.values():
        if manifest["executor"] == "slurm" and job_id not in slurm_jobs:
            slurm_jobs[job_id] = submitit.SlurmJob(folder=manifest["folder"], job_id=job_id)
    have_sacct = shutil.which("sacct") is not None
    if slurm_jobs and have_sacct:
        submitit.SlurmJob.watcher.update()
    out = {}
    for run_id, (manifest, job_id) in latest.items():
        if manifest["executor"] == "slurm":
            state = submitit.SlurmJob.watcher.get_state(job_id, mode="cache") if have_sacct else "UNKNOWN"
            state = state.split()[0].upper()  # "CANCELLED by 0" -> CANCELLED
        else:
            state = "ALIVE" if _local_alive(job_id) else "EXITED"
        paths = submitit.core.utils.JobPaths(manifest["folder"], job_id=job_id)
        out[run_id] = JobState(job_id, state, paths.stderr, manifest["id"])
    return out


def run_state(store: Store, spec: RunSpec, record: dict | None, job: JobState | None) -> tuple[str, str | None]:
    """(ok | failed | running | queued | pending, why) for one planned run."""
    if record is not None and record.get("status") == "ok":
        return "ok", None
    if store.is_running(spec) or (job is not None and job.state == "RUNNING"):
        return "running", None
    if job is not None and job.active:
        return "queued", None
    if record is not None:
        return "failed", record.get("error")
    if job is not None and job.state not in ("UNKNOWN",):
        return "failed", f"job {job.job_id} ended {job.state} before the run wrote a record"
    return "pending", None


def cancel(store: Store, manifests: list[dict]) -> list[str]:
    """Cancel the unfinished jobs of these submissions; returns what was cancelled."""
    done = []
    for manifest in manifests:
        ids = [j["job_id"] for j in manifest["jobs"]]
        if manifest["executor"] == "slurm":
            if shutil.which("scancel") is None:
                raise UserError("cancelling SLURM jobs needs scancel, and there is none on PATH here; "
                                "run `bench cancel` on the cluster's login node")
            for array_id in dict.fromkeys(i.split("_")[0] for i in ids):
                submitit.SlurmJob(folder=manifest["folder"], job_id=array_id).cancel(check=False)
                done.append(array_id)
        else:
            for pid in ids:
                if _local_alive(pid):
                    os.kill(int(pid), signal.SIGTERM)
                    done.append(pid)
    return done

