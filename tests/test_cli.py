"""`bench` as a user runs it: run, skip on rerun, --force, status, report, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.cli import main
from helpers import bench, record_files

pytestmark = pytest.mark.slow


def run_toy(suite, data, results, *extra):
    return bench("run", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
                 "--quiet", *extra)


def test_run_records_then_skips_then_forces(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    first = run_toy(suite, data, results, "--methods", "linear,full")
    assert first.returncode == 0, first.stderr
    records = record_files(results)
    assert len(records) == 4
    for path in records:
        rec = json.loads(path.read_text())
        assert rec["status"] == "ok" and rec["run_id"] == path.stem
        assert path.parent.name == rec["spec"]["task"] and path.parent.parent.name == rec["spec"]["method"]
        assert rec["metrics"]["top1"] >= 90
        assert rec["env"]["packages"]["timm"]
    assert "4 ran, 0 already done" in first.stdout
    assert "(groups)" in first.stdout and "top-1 (%)" in first.stdout  # the table at the end
    before = {p: p.stat().st_mtime_ns for p in records}
    again = run_toy(suite, data, results, "--methods", "linear,full")
    assert again.returncode == 0 and "0 ran, 4 already done" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in records} == before
    forced = run_toy(suite, data, results, "--methods", "linear", "--tasks", "colours", "--force")
    assert "1 ran, 0 already done" in forced.stdout
    assert len(record_files(results)) == 4
    # the record --force replaced is kept beside the new one, not counted
    kept = list((results / "toy" / "linear" / "colours" / "superseded").glob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["status"] == "ok"

    status = bench("status", "--results", str(results))
    assert status.returncode == 0
    assert "toy: 4 ok, 0 failed, 0 running, 0 queued, 0 pending" in status.stdout

    report = bench("report", "--suite", str(suite), "--results", str(results), "--out", str(tmp_path / "tables"))
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "tables" / "toy_final.md").read_text()
    assert "| linear" in md and "Mean (groups)" in md
    csv = (tmp_path / "tables" / "toy_final.csv").read_text().splitlines()
    assert csv[0].startswith("method,colours,more_colours,Natural,Structured,Mean (tasks),Mean (groups)")


def test_a_failed_run_is_recorded_the_suite_goes_on_and_a_rerun_retries_only_it(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    proc = run_toy(suite, data, results, "--methods", "linear,full", "--set", "full.lr=1e30")
    assert proc.returncode == 1
    assert "2 failed" in proc.stdout and "DivergedError" in proc.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in record_files(results))
    assert statuses == ["failed", "failed", "ok", "ok"]
    status = bench("status", "--results", str(results), "--suite", str(suite))
    assert "toy: 2 ok, 2 failed, 0 running, 0 queued, 0 pending" in status.stdout
    retry = run_toy(suite, data, results, "--methods", "linear,full", "--set", "full.lr=1e30")
    assert "2 ran, 2 already done, 0 running elsewhere, 2 failed" in retry.stdout


def test_partial_results_show_missing_cells_instead_of_a_mean_over_fewer_tasks(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    run_toy(suite, data, results, "--methods", "linear", "--tasks", "colours")
    report = bench("report", "--suite", str(suite), "--results", str(results), "--format", "md")
    assert report.returncode == 0
    assert "missing cells (1): linear/more_colours" in report.stdout
    md = (results / "toy" / "toy_final.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| linear"))
    assert row.count("—") == 4  # the task, its group mean, and both overall means


BAD_INPUTS = [
    (["run", "--suite", "nope"], "unknown suite 'nope'"),
    (["run", "--suite", "{suite}", "--methods", "lorra"], "unknown method 'lorra'"),
    (["run", "--suite", "{suite}", "--tasks", "cifar"], "unknown task 'cifar'"),
    (["run", "--suite", "{suite}", "--data-root", "{tmp}/absent"], "does not exist"),
    (["run", "--suite", "{suite}", "--data-root", "{tmp}"], "no folder for task 'colours'"),
    (["run", "--suite", "{suite}", "--set", "lr"], "expected key=value"),
    (["run", "--suite", "{suite}", "--set", "lr=fast"], "is not a valid float"),
    (["run", "--suite", "{suite}", "--seeds", "1,x"], "--seeds '1,x'"),
    (["run", "--suite", "{suite}", "--checkpoint", "{tmp}/w.pth"], "checkpoint file not found"),
    (["run", "--suite", "{suite}", "--backbone", "vit_base_patch16_224.orig_in21k"],
     "no pretrained weights for backbone"),
    (["run", "--suite", "{bad_suite}"], "unknown key 'colour'"),
    (["report", "--suite", "{suite}"], "nothing to report"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS)
def test_bad_input_is_one_clear_message_exit_2_and_nothing_written(toy_suite, tmp_path, capsys, argv, message):
    suite, data = toy_suite
    bad_suite = tmp_path / "bad.toml"
    bad_suite.write_text(suite.read_text() + "colour = 1\n")
    results = tmp_path / "results"
    args = [a.format(suite=suite, tmp=tmp_path, bad_suite=bad_suite) for a in argv]
    if args[0] == "run" and "--data-root" not in args:
        args += ["--data-root", str(data)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--results", str(results)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not results.exists()


def test_bad_input_from_the_command_line_exits_2_without_a_traceback(tmp_path):
    proc = bench("run", "--suite", "nope", "--results", str(tmp_path / "results"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown suite 'nope'") and "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_an_unreadable_image_found_mid_run_stops_with_its_name_and_records_nothing(toy_suite, tmp_path):
    suite, data = toy_suite
    (data / "colors" / "images" / "train" / "0007.jpg").write_bytes(b"broken")
    results = tmp_path / "results"
    proc = run_toy(suite, data, results, "--methods", "linear")
    assert proc.returncode == 2
    assert "unreadable image" in proc.stderr and "0007.jpg" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert record_files(results) == []


def _start(suite, data, results, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", "--suite", str(suite), "--data-root", str(data),
         "--results", str(results), "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})


def _start_and_wait_for_a_record(suite, data, results, *extra):
    """A `bench run` in the background, once it has recorded its first run (mid-suite)."""
    proc = _start(suite, data, results, *extra)
    deadline = time.time() + 300
    while not record_files(results) and time.time() < deadline:
        time.sleep(0.2)
    return proc


def test_a_suite_killed_mid_run_and_started_again_records_every_run_exactly_once(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    args = ("--methods", "linear,full", "--seeds", "0,1", "--set", "epochs=25")
    proc = _start_and_wait_for_a_record(suite, data, results, *args)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p: p.stat().st_mtime_ns for p in record_files(results)}
    assert 1 <= len(done_before) < 8, "the kill must land mid-suite"
    again = bench("run", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
                  "--quiet", *args)
    assert again.returncode == 0, again.stderr
    records = record_files(results)
    assert len(records) == 8
    assert len({json.loads(p.read_text())["run_id"] for p in records}) == 8
    assert all(json.loads(p.read_text())["status"] == "ok" for p in records)
    assert {p: p.stat().st_mtime_ns for p in done_before} == done_before  # not rerun
    assert f"{8 - len(done_before)} ran, {len(done_before)} already done" in again.stdout
    assert not list(results.rglob("*.lock")) and not list(results.rglob(".*.tmp"))


def _run_two_at_once(suite, data, results, *extra) -> list[int]:
    """Two identical `bench run`s started together; both must succeed. Returns how many runs each
    one ran itself (its "N ran, ..." line)."""
    procs = [_start(suite, data, results, *extra) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return [int(out.split(" ran,")[0].split()[-1]) for out, _ in outs]


def test_two_processes_on_one_results_root_share_the_work_and_lose_no_record(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    args = ("--methods", "linear,full", "--seeds", "0,1,2", "--set", "epochs=6")
    ran = _run_two_at_once(suite, data, results, *args)
    records = record_files(results)
    assert len(records) == 12
    assert all(json.loads(p.read_text())["status"] == "ok" for p in records)
    assert sum(ran) == 12, ran  # each run executed once, by one of the two


def test_two_concurrent_force_runs_rerun_each_run_once(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    args = ("--methods", "linear", "--seeds", "0,1", "--set", "epochs=4")
    assert run_toy(suite, data, results, *args).returncode == 0
    first = {p: json.loads(p.read_text())["started_at"] for p in record_files(results)}
    ran = _run_two_at_once(suite, data, results, *args, "--force")
    assert sum(ran) == 4, ran  # each of the 4 runs again, once, by one of the two
    assert all(json.loads(p.read_text())["started_at"] > first[p] for p in first)
    assert len(list(results.rglob("superseded/*.json"))) == 4


def test_ctrl_c_exits_130_and_leaves_nothing_half_written(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    args = ("--methods", "linear,full", "--seeds", "0,1", "--set", "epochs=25")
    proc = _start_and_wait_for_a_record(suite, data, results, *args)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "interrupted; finished runs are recorded" in err and "Traceback" not in err
    assert not list(results.rglob("*.lock")) and not list(results.rglob(".*.tmp"))
    assert all(json.loads(p.read_text())["status"] == "ok" for p in record_files(results))


def test_a_busy_machine_is_named_once_with_the_remedy(toy_suite, tmp_path, capsys, monkeypatch):
    suite, data = toy_suite
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 2.0, cores + 2.0, cores + 2.0))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--suite", str(suite), "--methods", "linear", "--tasks", "colours", "--set", "epochs=1",
              "--data-root", str(data), "--results", str(tmp_path / "results"), "--quiet"])
    assert exit_info.value.code == 0
    err = capsys.readouterr().err
    assert err.count("this machine is busy") == 1 and f"on {cores} cores" in err and "--threads" in err


def test_the_busy_rule_counts_this_runs_threads_against_the_free_cores(monkeypatch):
    from bench.measure import cpu_contention

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert cpu_contention(2) is None             # an idle machine (and this command's pre-flight)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert cpu_contention(1) is None             # another run with one thread, this one with one
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    assert "load 2.0 on 2 cores" in cpu_contention(2)  # another run on both cores, this one on both too
    assert "--threads 1" in cpu_contention(1)    # ... or on one: still three threads on two cores
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert cpu_contention(2) is not None
