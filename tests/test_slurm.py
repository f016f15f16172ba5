"""Job arrays through submitit, on the real single-node SLURM that `.ci/run` starts
(`../shared/tools/slurm-local.sh up`), and the parts that need no cluster.

The `slurm` tests skip, saying why, where no `sbatch` is on PATH or its controller does not answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import submitit

from bench.errors import UserError
from bench.executors.submitit import SlurmOptions, controller_problem, parse_extra, slurm_options
from helpers import bench, record_files

def _why_no_slurm() -> str | None:
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH"
    return controller_problem()


WHY_NO_SLURM = _why_no_slurm()
HAVE_SLURM = WHY_NO_SLURM is None
needs_slurm = pytest.mark.skipif(not HAVE_SLURM, reason=f"{WHY_NO_SLURM}: start a cluster with "
                                 "tests/cluster/slurm-local.sh up (as .ci/run does)")

# One core per job and the demo's smallest runs keep a whole array to seconds on 2 cores.
DEMO = ("--suite", "demo", "--executor", "slurm", "--partition", "debug", "--cpus-per-job", "1",
        "--set", "epochs=2", "--set", "warmup_epochs=1")
POLL = {"PEFTBENCH_POLL_SECONDS": "1"}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def manifests(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("_submissions/*/submission.json"))]


def records(results: Path) -> dict[str, dict]:
    return {(r := json.loads(p.read_text()))["spec"]["task"]: r for p in record_files(results)}


def sacct(job_id: str, fields: str = "JobID,State,Start,End") -> list[dict]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-D", "-j", job_id, "-o", fields],
                         capture_output=True, text=True, check=True).stdout
    names = fields.split(",")
    return [dict(zip(names, line.split("|"))) for line in out.splitlines() if line.strip()]


def run_bench(*args, results: Path, timeout: float = 600):
    return bench("run", *args, "--results", str(results), "--quiet", env=POLL, timeout=timeout)


# ------------------------------------------------------------------------- on a real SLURM
@pytest.mark.slurm
@needs_slurm
def test_a_demo_array_fills_every_cell_and_respects_array_parallelism(tmp_path):
    results = tmp_path / "results"
    out = run_bench(*DEMO, "--methods", "linear", "--tasks", "mnist,textures,shapes_loc",
                    "--array-parallelism", "1", "--wait", results=results)
    assert out.returncode == 0, out.stdout + out.stderr
    recs = records(results)
    assert sorted(recs) == ["mnist", "shapes_loc", "textures"]
    assert all(r["status"] == "ok" and r["metrics"]["top1"] > 10 for r in recs.values())
    (manifest,) = manifests(results)
    assert manifest["executor"] == "slurm" and len(manifest["jobs"]) == 3
    array_id = manifest["jobs"][0]["job_id"].split("_")[0]
    assert {r["job"]["job_id"] for r in recs.values()} == {j["job_id"] for j in manifest["jobs"]}
    assert all(r["env"]["slurm"]["SLURM_ARRAY_JOB_ID"] == array_id for r in recs.values())
    script = (Path(manifest["folder"]) / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-2%1" in script and "#SBATCH --partition=debug" in script
    # SLURM ran the tasks one at a time: each started when (or after) the previous one ended.
    rows = sorted(sacct(array_id), key=lambda r: r["Start"])
    assert [r["State"] for r in rows] == ["COMPLETED"] * 3
    assert all(a["End"] <= b["Start"] for a, b in zip(rows, rows[1:])), rows
    status = bench("status", "--results", str(results))
    assert "demo: 3 ok, 0 failed, 0 running, 0 queued, 0 pending" in status.stdout
    again = run_bench(*DEMO, "--methods", "linear", "--tasks", "mnist,textures,shapes_loc", results=results)
    assert again.returncode == 0 and "nothing to submit" in again.stdout
    assert len(manifests(results)) == 1


@pytest.mark.slurm
@needs_slurm
def test_a_preempted_job_requeues_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(tmp_path):
    args = ("--suite", "demo", "--methods", "vpt-deep", "--tasks", "mnist", "--set", "epochs=4",
            "--checkpoint-interval", "0")
    results = tmp_path / "results"
    sub = run_bench(*args, "--executor", "slurm", "--cpus-per-job", "2", results=results)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    (manifest,) = manifests(results)
    job = submitit.SlurmJob(folder=manifest["folder"], job_id=manifest["jobs"][0]["job_id"])
    wait_for(lambda: list(results.rglob("*.ckpt")), 180, "the first epoch checkpoint")
    job._interrupt()  # the preemption signal, as SLURM sends it
    wait_for(lambda: record_files(results), 300, "the requeued job's record")
    rec = records(results)["mnist"]
    assert rec["status"] == "ok", rec.get("error")
    assert rec["metrics"]["resumed_from_epoch"] >= 1
    assert not list(results.rglob("*.ckpt"))  # deleted once the record is written
    assert "this job is preempted" in Path(rec["job"]["stderr"]).read_text()
    assert any(r["State"] == "REQUEUED" for r in sacct(job.job_id))
    # the same spec, never interrupted, in this machine's local executor with the same threads
    reference = tmp_path / "reference"
    ref = run_bench(*args, "--threads", "2", results=reference)
    assert ref.returncode == 0, ref.stderr
    ref_rec = records(reference)["mnist"]
    assert ref_rec["run_id"] == rec["run_id"] and ref_rec["metrics"]["resumed_from_epoch"] == 0
    assert rec["metrics"]["top1"] == ref_rec["metrics"]["top1"]
    assert [c["train_loss"] for c in rec["curve"]] == pytest.approx(
        [c["train_loss"] for c in ref_rec["curve"]], rel=1e-6)


BRITTLE = '''
from bench.model import PeftModel, freeze, make_head
from bench.registry import register_method

@register_method("brittle", defaults={"optimizer": "sgd", "lr": 1.0}, summary="fails on 9 classes")
def build(backbone, num_classes, hparams):
    if num_classes == 9:
        raise RuntimeError("brittle cannot do 9 classes")
    freeze(backbone)
    return PeftModel(backbone, make_head(backbone.num_features, num_classes))
'''


@pytest.mark.slurm
@needs_slurm
def test_a_raising_job_is_recorded_failed_the_rest_completes_and_only_it_is_resubmitted(tmp_path):
    plugin = tmp_path / "brittle.py"
    plugin.write_text(textwrap.dedent(BRITTLE))
    results = tmp_path / "results"
    args = (*DEMO, "--methods", "brittle", "--plugin", str(plugin), "--tasks", "mnist,shapes_loc")
    out = run_bench(*args, "--wait", results=results)
    assert out.returncode == 1, out.stdout + out.stderr
    recs = records(results)
    assert recs["mnist"]["status"] == "ok"
    assert recs["shapes_loc"]["status"] == "failed"
    assert "RuntimeError: brittle cannot do 9 classes" in recs["shapes_loc"]["error"]
    (manifest,) = manifests(results)
    states = {r["JobID"]: r["State"] for r in sacct(manifest["jobs"][0]["job_id"].split("_")[0])}
    assert sorted(states.values()) == ["COMPLETED", "FAILED"]
    failed = bench("status", "--results", str(results), "--failed")
    assert failed.returncode == 1
    assert "brittle/shapes_loc" in failed.stdout and "brittle cannot do 9 classes" in failed.stdout
    log = failed.stdout.split("log:")[1].split()[0]
    assert Path(log).is_file() and "RunsFailed" in Path(log).read_text()
    again = run_bench(*args, results=results)
    assert again.returncode == 0 and "submitted 1 runs" in again.stdout, again.stdout
    second = manifests(results)[-1]
    assert [j["run_ids"] for j in second["jobs"]] == [[recs["shapes_loc"]["run_id"]]]
    wait_for(lambda: all(r["State"] not in ("PENDING", "RUNNING") for r in sacct(second["jobs"][0]["job_id"])),
             120, "the resubmitted job to end")


@pytest.mark.slurm
@needs_slurm
def test_scancel_of_a_running_job_shows_it_not_done_and_nothing_hangs(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--suite", "demo", "--executor", "slurm", "--methods",
           "full", "--tasks", "mnist", "--set", "epochs=200", "--wait", "--quiet", "--results", str(results)]
    waiting = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **POLL})
    try:
        wait_for(lambda: list(results.rglob("*.lock")), 180, "the run to start in its job")
        running = bench("status", "--results", str(results))
        assert "demo: 0 ok, 0 failed, 1 running" in running.stdout, running.stdout
        cancelled = bench("cancel", "--suite", "demo", "--results", str(results))
        assert cancelled.returncode == 0 and "cancelled submission" in cancelled.stdout
        out, err = waiting.communicate(timeout=120)  # --wait returns: the job is over
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 1, out + err
    assert "│ final │ full   │  0 │      1 │" in out  # the waiter's last table: failed, not running
    # SLURM kills a cancelled job's process KillWait (5 s) after it marks the job CANCELLED; until
    # then the run's lock is still held and the run honestly shows as running.
    status = wait_for(lambda: (s := bench("status", "--results", str(results), "--failed", timeout=60))
                      and "demo: 0 ok, 1 failed" in s.stdout and s, 60, "status to show the cancelled run")
    assert "ended CANCELLED before the run wrote a record" in status.stdout
    assert not record_files(results)


@pytest.mark.slurm
@needs_slurm
def test_an_array_the_cluster_refuses_is_one_error_and_leaves_nothing(tmp_path):
    results = tmp_path / "results"
    out = run_bench("--suite", "demo", "--executor", "slurm", "--partition", "no-such-partition",
                    "--methods", "linear", "--tasks", "mnist", results=results)
    assert out.returncode == 2
    assert "error: the cluster refused the array (1 tasks)" in out.stderr and "partition" in out.stderr
    assert "Traceback" not in out.stderr
    assert not [p for p in results.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------ no cluster
def test_slurm_executor_without_sbatch_fails_with_one_message_before_anything_is_written(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    results = tmp_path / "results"
    out = bench("run", "--suite", "demo", "--executor", "slurm", "--results", str(results),
                env={"PATH": str(empty)})
    assert out.returncode == 2
    assert "error: --executor slurm needs SLURM's sbatch" in out.stderr
    assert "Traceback" not in out.stderr and not results.exists()


def test_slurm_executor_with_a_dead_controller_fails_with_one_message_before_anything_is_written(tmp_path):
    # SLURM's client tools installed, its daemons stopped: sinfo cannot reach the controller
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool, body in (("sbatch", "exit 1"), ("sinfo", "echo 'sinfo: error: Unable to contact slurm controller "
                                                       "(connect failure)' >&2; exit 1")):
        (fake / tool).write_text(f"#!/bin/sh\n{body}\n")
        (fake / tool).chmod(0o755)
    results = tmp_path / "results"
    out = bench("run", "--suite", "demo", "--executor", "slurm", "--results", str(results),
                env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "controller does not answer" in errors[0] and "Unable to contact" in errors[0]
    assert "Traceback" not in out.stderr and not results.exists()


def test_slurm_options_come_from_defaults_then_config_then_command_line(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[slurm]\npartition = "gpu"\ntime = 60\ncpus-per-job = 8\nextra = { exclusive = "" }\n')
    opts = slurm_options(config, {"time": 30, "extra": parse_extra(["mail-type=END"]), "partition": None})
    assert (opts.partition, opts.time, opts.cpus_per_job, opts.chunk) == ("gpu", 30, 8, 1)
    assert opts.extra == {"exclusive": "", "mail_type": "END"}
    params = opts.executor_parameters("slurm", "peftbench-demo")
    assert params["slurm_partition"] == "gpu" and params["timeout_min"] == 30
    assert params["cpus_per_task"] == 8 and params["slurm_additional_parameters"]["mail_type"] == "END"
    assert not any(k.startswith("slurm_") for k in opts.executor_parameters("submitit-local", "x"))
    config.write_text('[slurm]\npartion = "gpu"\n')
    with pytest.raises(UserError, match=r"\[slurm\]: unknown key 'partion'"):
        slurm_options(config, {})
    with pytest.raises(UserError, match="--chunk or \\[slurm\\] chunk: expected an integer of at least 1"):
        slurm_options(None, {"chunk": 0})
    with pytest.raises(UserError, match="expected key=value"):
        parse_extra(["exclusive"])
    assert SlurmOptions().time == 240


def test_wait_and_chunk_need_a_job_executor(toy_suite, tmp_path):
    suite, data = toy_suite
    out = bench("run", "--suite", str(suite), "--data-root", str(data), "--wait",
                "--results", str(tmp_path / "r"))
    assert out.returncode == 2 and "--wait: only with --executor slurm or submitit-local" in out.stderr


@pytest.mark.slow
def test_submitit_local_runs_an_array_as_parallel_processes(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    out = bench("run", "--suite", str(suite), "--data-root", str(data), "--methods", "linear",
                "--executor", "submitit-local", "--cpus-per-job", "1", "--wait", "--quiet",
                "--results", str(results), env=POLL)
    assert out.returncode == 0, out.stdout + out.stderr
    recs = records(results)
    assert sorted(recs) == ["colours", "more_colours"]
    assert all(r["status"] == "ok" and r["metrics"]["top1"] >= 90 for r in recs.values())
    (manifest,) = manifests(results)
    assert manifest["executor"] == "submitit-local" and len(manifest["jobs"]) == 2  # 2 cores, 1 each
    assert len({r["job"]["job_id"] for r in recs.values()}) == 2
    status = bench("status", "--results", str(results))
    assert "toy: 2 ok, 0 failed, 0 running, 0 queued, 0 pending" in status.stdout
    # --force reruns them in the array too, and keeps the records it replaces
    forced = bench("run", "--suite", str(suite), "--data-root", str(data), "--methods", "linear",
                   "--executor", "submitit-local", "--cpus-per-job", "1", "--wait", "--quiet", "--force",
                   "--results", str(results), env=POLL)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    again = records(results)
    assert all(again[t]["started_at"] > recs[t]["started_at"] for t in recs)
    assert len(list(results.rglob("superseded/*.json"))) == 2


@pytest.mark.slow
def test_vtab_protocol_in_arrays_submits_the_final_stage_once_its_tune_runs_are_ok(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    args = ("run", "--suite", str(suite), "--data-root", str(data), "--methods", "linear", "--protocol", "vtab",
            "--set", "lr=10", "--set", "weight_decay=0", "--set", "epochs=3", "--executor", "submitit-local",
            "--cpus-per-job", "1", "--quiet", "--results", str(results))
    first = bench(*args, env=POLL)  # returns after submitting the tune stage
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted 2 runs" in first.stdout and "final stage waits for the tune runs of 2 cells" in first.stdout
    wait_for(lambda: len(record_files(results)) == 2, 300, "the tune runs")
    assert {json.loads(p.read_text())["spec"]["stage"] for p in record_files(results)} == {"tune"}
    second = bench(*args, "--wait", env=POLL)  # a second invocation submits the final stage
    assert second.returncode == 0, second.stdout + second.stderr
    assert "submitted 2 runs" in second.stdout and "waits" not in second.stdout
    stages = sorted(json.loads(p.read_text())["spec"]["stage"] for p in record_files(results))
    assert stages == ["final", "final", "tune", "tune"]
    assert [len(m["jobs"]) for m in manifests(results)] == [2, 2]
    assert "(groups)" in second.stdout and "top-1 (%)" in second.stdout
