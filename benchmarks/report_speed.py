"""How long `bench report` takes over 10,000 run records (target: under 2 seconds).

    python benchmarks/report_speed.py [--records 10000]

Writes hand-made records for the VTAB-1k suite (methods x 19 tasks x seeds) into a temporary
results root, then times reading them and building the Markdown, LaTeX and CSV tables.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.reports import write_report
from bench.reports.table import build_report
from bench.spec import RunSpec
from bench.store import Store
from bench.suite import load_suite


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000)
    args = p.parse_args()
    suite = load_suite("vtab1k")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        n = 0
        seed = 0
        while n < args.records:
            for m in range(10):
                for task in suite.tasks:
                    if n >= args.records:
                        break
                    spec = RunSpec(suite="vtab1k", task=task.name, method=f"method{m}", seed=seed,
                                   stage="final", backbone="vit_base_patch16_224.orig_in21k",
                                   checkpoint=None, image_size=224, hparams={"lr": 1.0})
                    store.write(spec, {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "ok",
                                       "finished_at": "2026-11-25T00:00:00+00:00",
                                       "metrics": {"top1": 50.0 + m + seed % 7, "trainable_params": 1e5 * (m + 1),
                                                   "trainable_params_no_head": 1e5 * m, "peak_memory_mib": 1e3,
                                                   "train_seconds": 60.0}})
                    n += 1
            seed += 1
        # the registries (methods import timm) load once per process, whatever the records
        w0 = time.perf_counter()
        from bench.method import all_methods
        from bench.reports import WRITERS
        all_methods(), WRITERS.items()
        imports = time.perf_counter() - w0
        t0 = time.perf_counter()
        report = build_report(store, suite, compare_published=True)
        t1 = time.perf_counter()
        write_report(report, Path(tmp) / "out", ["md", "latex", "csv"])
        t2 = time.perf_counter()
    print(f"records: {n} ({len(report.mean)} methods x 19 tasks x {seed} seeds)")
    print(f"read + aggregate: {t1 - t0:.2f} s; tables (md, latex, csv): {t2 - t1:.2f} s; "
          f"total {t2 - t0:.2f} s (target < 2 s); loading the method registry before: {imports:.2f} s")


if __name__ == "__main__":
    main()
