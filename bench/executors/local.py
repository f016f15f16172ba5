"""`--executor local` (the default): the runs go one after another in this process."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..runs import run_specs
from ..suite import load_suite
from . import Executor, JobContext, Launch, register_executor


@register_executor("local")
class LocalExecutor(Executor):
    in_process = True

    def check(self) -> None:
        given = [f"--{k}" for k in ("wait", "chunk") if (self.options or {}).get(k)]
        given += [f"--{k.replace('_', '-')}" for k in ("partition", "gpus_per_job", "cpus_per_job", "mem", "time",
                                                     "array_parallelism", "account", "qos", "constraint",
                                                     "extra") if (self.options or {}).get(k) is not None]
        if given:
            raise UserError(f"{', '.join(given)}: only with --executor slurm or submitit-local; --executor "
                            "local (the default) always runs in this process and waits")

    def launch(self, specs, ctx: JobContext, store, suite, command, on_done=None) -> Launch:
        outcome = run_specs(specs, load_suite(ctx.suite_path), Path(ctx.data_root), store, ctx.engine,
                            force_since=ctx.force_since, on_done=on_done)
        return Launch(specs, outcome=outcome)
