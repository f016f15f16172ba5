"""Executors: where runs go. One file each in this folder, registered by name.

An executor takes the specs that are left to run and launches them: in this process (`local`),
or as a job array (`slurm`, `submitit-local`). It also tells the state of the jobs it
submitted earlier and cancels them. The run flow (`bench.campaign`) is the same for all.

A new executor is one file here (or a plugin) with a class decorated `@register_executor(name)`
that implements `Executor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..registry import Registry
from ..spec import RunSpec
from ..states import JobState
from ..store import Store


@dataclass
class JobContext:
    """What runs need away from the process that planned them: the suite file, the data and
    results roots, plugins, threads, the device to resolve where the job runs, the engine
    options exactly as the user gave them, and `--force`'s start time."""
    suite_path: str
    data_root: str
    results: str
    plugins: list[str]
    threads: int | None
    device: str
    engine: Any                       # bench.engine.EngineOptions (device resolved on the node)
    force_since: str | None = None


@dataclass
class Launch:
    """What one `launch` started: in this process it has already run (`outcome`); as an array it
    is a submission to follow (`wait`)."""
    specs: list[RunSpec]
    outcome: Any = None               # bench.runs.Outcome, for an in-process launch
    submission: Any = None            # bench.executors.submitit.Submission, for an array


class Executor:
    """Base class of executors; `options` are the executor's own (e.g. SLURM resources)."""

    name: ClassVar[str] = ""
    in_process: ClassVar[bool] = False   # True: runs here, one after another, and waits

    def __init__(self, options: Any = None):
        self.options = options

    def check(self) -> None:
        """Refuse, before anything is written or submitted, what cannot work here."""

    def launch(self, specs: list[RunSpec], ctx: JobContext, store: Store, suite: str, command: str,
               on_done=None) -> Launch:
        raise NotImplementedError

    def wait(self, launch: Launch, store: Store, on_update) -> int:
        """Block until the launch is done; returns the number of its runs that failed."""
        return len(launch.outcome.failed) if launch.outcome is not None else 0

    @classmethod
    def job_states(cls, store: Store, manifests: list[dict]) -> dict[str, JobState]:
        """run_id -> the state of the latest job of these submissions that holds it."""
        return {}

    @classmethod
    def cancel(cls, manifests: list[dict]) -> list[str]:
        """Cancel the unfinished jobs of these submissions; returns what was cancelled."""
        return []


EXECUTORS: Registry[type[Executor]] = Registry("executor", "bench.executors", "peftbench.executors")


register_executor = EXECUTORS.register_class  # the class decorator: @register_executor(name)
