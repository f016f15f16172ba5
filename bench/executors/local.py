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
        if self.options and (self.options.get("wait") or self.options.get("chunk")):
            raise UserError("--wait and --chunk go with --executor slurm or submitit-local; "
                            "--executor local (the default) always runs in this process and waits")

    def launch(self, specs, ctx: JobContext, store, suite, command, on_done=None) -> Launch:
        outcome = run_specs(specs, load_suite(ctx.suite_path), Path(ctx.data_root), store, ctx.engine,
                            force_since=ctx.force_since, on_done=on_done)
        return Launch(specs, outcome=outcome)
