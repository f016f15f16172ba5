"""The README's demo table, regenerated from a real run so that it cannot drift.

    python benchmarks/demo_table.py [--methods all] [--results DIR] [--figures DIR] [--page PNG] [--set key=value ...]

Runs `bench run --suite demo` as the README's first command does, in a fresh results root
(and a fresh demo-data cache unless --keep-cache, so the timing includes writing the data), and
prints the table as the command printed it, the wall time, the peak resident memory, the machine
and the commit that produced it: the block to paste into the README. With --figures DIR it also
writes the report's figures (PNG) there from the same records: the README's are in docs/figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=None, help="as for bench run (default: the suite's headline set)")
    p.add_argument("--results", help="results root (default: a new temporary folder)")
    p.add_argument("--keep-cache", action="store_true", help="reuse the demo data already in the cache")
    p.add_argument("--figures", help="also write the report's PNG figures into this folder")
    p.add_argument("--page", help="also write the results page (bench report --format html --plots) and save a "
                                  "screenshot of it, as Chromium shows it, to this PNG file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    results = args.results or tempfile.mkdtemp(prefix="peftbench-demo-")
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    if not args.keep_cache:
        env["PEFTBENCH_CACHE"] = tempfile.mkdtemp(prefix="peftbench-cache-")
    cmd = [sys.executable, "-m", "bench.cli", "run", "--suite", "demo", "--results", results, "--quiet"]
    if args.methods:
        cmd += ["--methods", args.methods]
    for item in args.set:
        cmd += ["--set", item]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"bench run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    table = proc.stdout[proc.stdout.index("┏") - 0:] if "┏" in proc.stdout else proc.stdout
    title = [line for line in proc.stdout.splitlines() if "top-1 (%)" in line]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    cores = len(os.sched_getaffinity(0))
    print(f"command: bench run --suite demo{' --methods ' + args.methods if args.methods else ''}"
          f"{''.join(' --set ' + s for s in args.set)}")
    print(f"commit {commit}{' (with uncommitted changes)' if dirty else ''}; {platform.processor() or platform.machine()}, "
          f"{cores} cores, Python {platform.python_version()}; wall time {seconds / 60:.1f} min "
          f"({seconds:.0f} s, first run: the demo data written too{'' if not args.keep_cache else ' (no: cached)'}); "
          f"peak resident memory {peak:.2f} GiB")
    print("\n".join(title))
    print(table.rstrip())
    print(f"records in {results}")
    if args.figures:
        write_figures(results, Path(args.figures), env)
    if args.page:
        screenshot_page(results, Path(args.page), env)


def screenshot_page(results: str, png: Path, env: dict) -> None:
    """The results page of these records, and a screenshot of its top in headless Chromium."""
    from playwright.sync_api import sync_playwright

    out = Path(tempfile.mkdtemp(prefix="peftbench-page-"))
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "report", "--suite", "demo", "--results", results,
                           "--format", "html", "--plots", "--out", str(out)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench report failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    page_file = out / "demo_final.html"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("PEFTBENCH_CHROMIUM", "/usr/bin/chromium"),
                                    args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(page_file.as_uri())
        page.screenshot(path=str(png))
        page.locator("#results td.task").nth(1).click()  # a cell's details open over the table
        page.screenshot(path=str(png.with_name(png.stem + "_detail.png")))
        browser.close()
    print(f"page {page_file}; screenshot {png}")


def write_figures(results: str, folder: Path, env: dict) -> None:
    out = Path(tempfile.mkdtemp(prefix="peftbench-report-"))
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "report", "--suite", "demo", "--results", results,
                           "--plots", "--out", str(out)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench report failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    folder.mkdir(parents=True, exist_ok=True)
    for png in sorted((out / "plots").glob("*.png")):
        shutil.copy(png, folder / png.name)
        print(f"figure {folder / png.name}")


if __name__ == "__main__":
    main()
