"""Runs as submitit job arrays: on SLURM (`--executor slurm`) or as local subprocesses
(`--executor submitit-local`).

One launch submits one array (one `map_array` call). Each array task runs a chunk of runs one
after another (`bench.runs.run_specs`, as the local executor does); the job function is a
`submitit.helpers.Checkpointable`, so on preemption or at its time limit submitit requeues it
and the interrupted run resumes from its epoch checkpoint (see `bench.engine`).

Every submission gets a folder `<results>/_submissions/<id>/` holding submitit's job files
and logs and `submission.json`, the manifest that maps each array task to its runs and logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import signal
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from .. import tomlfile
from ..errors import UserError
from ..spec import RunSpec
from ..states import JobState
from ..store import Store, read_json, write_json_atomic
from . import Executor, JobContext, Launch, register_executor


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
    wait: bool = False

    def executor_parameters(self, cluster: str, name: str) -> dict[str, Any]:
        """submitit's `update_parameters` arguments for this executor."""
        params: dict[str, Any] = {"name": name, "timeout_min": self.time, "cpus_per_task": self.cpus_per_job}
        if cluster == "slurm":
            params.update(gpus_per_node=self.gpus_per_job, slurm_array_parallelism=self.array_parallelism)
            for key in ("partition", "mem", "account", "qos", "constraint"):
                if getattr(self, key):
                    params[f"slurm_{key}"] = getattr(self, key)
            if self.extra:
                params["slurm_additional_parameters"] = dict(self.extra)
        return params


_INT_OPTIONS = {"gpus_per_job": 0, "cpus_per_job": 1, "time": 1, "array_parallelism": 1, "chunk": 1}
_STR_OPTIONS = ("partition", "mem", "account", "qos", "constraint")


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
    known = set(SlurmOptions.__dataclass_fields__) - {"wait"}
    if config is not None:
        try:
            section = tomlfile.loads(config.read_text(encoding="utf-8")).get("slurm", {})
        except (tomlfile.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{config}: not valid TOML ({exc})") from None
        if not isinstance(section, dict):
            raise UserError(f"{config}: [slurm] must be a table of options")
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in known:
                raise UserError(f"{config} [slurm]: unknown key {key!r}; known: {', '.join(sorted(known))}")
            if name == "extra":
                if not isinstance(value, dict):
                    raise UserError(f"{config} [slurm]: extra must be a table, e.g. extra = {{ exclusive = \"\" }}")
                value = {str(k): str(v) for k, v in value.items()}
            elif name in _STR_OPTIONS and not isinstance(value, str):
                raise UserError(f"{config} [slurm]: {key} must be a string, got {value!r}")
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


# ---------------------------------------------------------------------------------- job side
class RunsFailed(RuntimeError):
    """Raised at the end of an array task whose runs did not all succeed (after all were tried)."""


class ArrayTask(submitit.helpers.Checkpointable):
    """Runs a chunk of specs; requeued on preemption, resuming each run from its checkpoint."""

    def __call__(self, ctx: JobContext, specs: list[dict]) -> dict[str, str]:
        from dataclasses import replace

        from ..backbones import set_threads
        from ..engine import resolve_device
        from ..registry import load_plugin
        from ..runs import run_specs
        from ..suite import load_suite

        for plugin in ctx.plugins:
            load_plugin(plugin)
        suite = load_suite(ctx.suite_path)
        set_threads(ctx.threads)
        opts = replace(ctx.engine, device=resolve_device(ctx.device))
        store = Store(ctx.results)
        env = submitit.JobEnvironment()
        job = {"job_id": env.job_id, "stdout": str(env.paths.stdout), "stderr": str(env.paths.stderr),
               "host": env.hostname}
        runs = [RunSpec.from_dict(d) for d in specs]

        def report(spec, record):
            if record is not None:
                print(f"{record['status']}: {spec.stage} {spec.method}/{spec.task} seed {spec.seed} -> "
                      f"{store.record_path(spec)}" + (f" ({record['error']})" if record["error"] else ""),
                      flush=True)

        outcome = run_specs(runs, suite, Path(ctx.data_root), store, opts, force_since=ctx.force_since,
                            on_done=report, record_user_errors=True, job=job)
        if outcome.failed:
            # The job fails so that SLURM's accounting shows it; the records hold the errors.
            raise RunsFailed(f"{len(outcome.failed)} of {len(runs)} runs failed: "
                             f"{', '.join(s.run_id for s, _ in outcome.failed)}; "
                             "`bench status --failed` shows their errors")
        statuses = {s.run_id: "ok" for s in outcome.ran + outcome.skipped}
        statuses.update({s.run_id: "running elsewhere" for s in outcome.busy})
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


def chunked(specs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    return [specs[i:i + size] for i in range(0, len(specs), size)]


def submissions(store: Store, suite: str | None = None) -> list[dict]:
    """Manifests of the results root, oldest first."""
    out = []
    for path in sorted((store.root / "_submissions").glob("*/submission.json")):
        manifest = read_json(path)
        if manifest is None or not isinstance(manifest.get("jobs"), list):
            store.problems.append(f"{path}: not a readable submission manifest; skipped")
            continue
        if suite is None or manifest.get("suite") == suite:
            out.append(manifest)
    return out


def _log(manifest: dict, job: dict) -> str:
    """A job's stderr log: recorded in the manifest, or (manifests written before it was) where
    submitit writes it, `<folder>/<job id>_<task rank>_log.err`."""
    return job.get("stderr") or str(Path(manifest["folder"]) / f"{job['job_id']}_0_log.err")


def _local_alive(pid: str) -> bool:
    """A submitit-local job is a process; alive if that pid still runs submitit's job runner."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"submitit" in cmdline


class SubmititExecutor(Executor):
    cluster: str = ""

    def __init__(self, options: dict | SlurmOptions | None = None):
        """`options`: SlurmOptions, or the command line's cluster options as a dict (with
        `config`: the config file given with --config, if any)."""
        if not isinstance(options, SlurmOptions):
            cli = dict(options or {})
            config = user_config_path(cli.pop("config", None))
            options = slurm_options(config, cli)
        super().__init__(options)

    def launch(self, specs, ctx: JobContext, store, suite, command, on_done=None) -> Launch:
        """Submit `specs` as one array (one `map_array` call) and write its manifest."""
        options: SlurmOptions = self.options
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        sub_id = f"{stamp}-{suite}-{os.urandom(3).hex()}"
        folder = (store.root / "_submissions" / sub_id).resolve()
        size = options.chunk
        if self.cluster == "local":
            # submitit's local executor starts every array task at once: chunk so that no more
            # processes run than --array-parallelism (or the cores, divided by each job's threads).
            cores = len(os.sched_getaffinity(0))
            parallel = min(options.array_parallelism, max(1, cores // max(1, options.cpus_per_job)))
            size = max(size, -(-len(specs) // parallel))
        chunks = chunked(specs, size)
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        executor.update_parameters(**options.executor_parameters(self.cluster, f"peftbench-{suite}"))
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
            "id": sub_id, "suite": suite, "executor": self.name, "created": stamp, "command": command,
            "folder": str(folder), "parameters": asdict(options),
            "jobs": [{"job_id": job.job_id, "run_ids": [s.run_id for s in c],
                      "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
                     for job, c in zip(jobs, chunks)],
        }
        write_json_atomic(folder / "submission.json", manifest)
        return Launch(specs, submission=Submission(sub_id, folder, self.name, suite, jobs, manifest))

    def wait(self, launch: Launch, store: Store, on_update) -> int:
        """Poll until every array task is done, calling `on_update(done, total)` each time.

        Never calls `job.result()`: one failed task raises there and hides the others
        (submitit issue 1628). Done-ness comes from submitit, run outcomes from the records."""
        sub = launch.submission
        poll = float(os.environ.get("PEFTBENCH_POLL_SECONDS", "5"))
        while True:
            done = sum(job.done() for job in sub.jobs)
            on_update(done, len(sub.jobs))
            if done == len(sub.jobs):
                break
            time.sleep(poll)
        return sum(1 for s in launch.specs if not store.is_ok(s))

    @classmethod
    def job_states(cls, store: Store, manifests: list[dict]) -> dict[str, JobState]:
        latest: dict[str, tuple[dict, dict]] = {}
        for manifest in manifests:
            for job in manifest["jobs"]:
                for run_id in job["run_ids"]:
                    latest[run_id] = (manifest, job)
        return {run_id: cls._state(manifest, job) for run_id, (manifest, job) in latest.items()}

    @classmethod
    def _state(cls, manifest: dict, job: dict) -> JobState:
        raise NotImplementedError


@register_executor("slurm")
class SlurmExecutor(SubmititExecutor):
    cluster = "slurm"

    def check(self) -> None:
        if shutil.which("sbatch") is None:
            raise UserError("--executor slurm needs SLURM's sbatch, and there is none on PATH here; run "
                            "`bench run` on a SLURM login node, or use --executor local (this process) or "
                            "--executor submitit-local (parallel processes on this machine)")
        problem = controller_problem()
        if problem:
            raise UserError(f"--executor slurm: {problem}; start the controller (or ask your cluster's "
                            f"admins), or use --executor local or submitit-local")

    @classmethod
    def job_states(cls, store: Store, manifests: list[dict]) -> dict[str, JobState]:
        # one `sacct` call for every job, through submitit's watcher
        cls._sacct = shutil.which("sacct") is not None
        if cls._sacct:
            for manifest in manifests:
                for job in manifest["jobs"]:
                    submitit.SlurmJob(folder=manifest["folder"], job_id=job["job_id"])
            if manifests:
                submitit.SlurmJob.watcher.update()
        return super().job_states(store, manifests)

    @classmethod
    def _state(cls, manifest: dict, job: dict) -> JobState:
        state = "UNKNOWN"
        job = {"stderr": _log(manifest, job), **job}
        if getattr(cls, "_sacct", False):
            state = submitit.SlurmJob.watcher.get_state(job["job_id"], mode="cache")
            state = state.split()[0].upper()  # "CANCELLED by 0" -> CANCELLED
        return JobState(job["job_id"], state, job.get("stderr"), manifest["id"])

    @classmethod
    def cancel(cls, manifests: list[dict]) -> list[str]:
        if shutil.which("scancel") is None:
            raise UserError("cancelling SLURM jobs needs scancel, and there is none on PATH here; "
                            "run `bench cancel` on the cluster's login node")
        done = []
        for manifest in manifests:
            for array_id in dict.fromkeys(j["job_id"].split("_")[0] for j in manifest["jobs"]):
                submitit.SlurmJob(folder=manifest["folder"], job_id=array_id).cancel(check=False)
                done.append(array_id)
        return done


@register_executor("submitit-local")
class SubmititLocalExecutor(SubmititExecutor):
    cluster = "local"

    @classmethod
    def _state(cls, manifest: dict, job: dict) -> JobState:
        state = "ALIVE" if _local_alive(job["job_id"]) else "EXITED"
        job = {"stderr": _log(manifest, job), **job}
        return JobState(job["job_id"], state, job.get("stderr"), manifest["id"])

    @classmethod
    def cancel(cls, manifests: list[dict]) -> list[str]:
        done = []
        for manifest in manifests:
            for job in manifest["jobs"]:
                if _local_alive(job["job_id"]):
                    os.kill(int(job["job_id"]), signal.SIGTERM)
                    done.append(job["job_id"])
        return done


def controller_problem(timeout: float = 20.0) -> str | None:
    """Why SLURM's controller cannot take jobs from here (`sinfo` fails), or None when it answers.

    SLURM's client tools can be installed with no controller running (packages installed,
    daemons stopped); then sbatch would fail only after the whole array was planned.
    """
    if shutil.which("sinfo") is None:
        return None  # nothing to ask: sbatch itself will say
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"SLURM's controller did not answer `sinfo` within {timeout:.0f} s"
    except OSError as exc:
        return f"`sinfo` could not run ({exc})"
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no message"])[0]
        return f"SLURM's controller does not answer (`sinfo` exited {proc.returncode}: {first})"
    return None
