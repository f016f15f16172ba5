"""Run ids, atomic records, and run locks that die with their process."""

import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from bench.spec import RunSpec
from bench.store import RunLock, Store, write_json_atomic


def spec(**kw):
    base = dict(suite="demo", task="mnist", method="linear", seed=42, stage="final",
                backbone="peftbench_demo_vit.fmnist", checkpoint=None, image_size=32,
                hparams={"lr": 1.0, "epochs": 10}, splits=("train800val200", "test"),
                format="vtab1k-folder", transform="resize", precision="auto")
    base.update(kw)
    return RunSpec(**base)


def v1_spec(**kw):
    """A spec as records written before run ids covered splits, format and precision hold it."""
    return spec(splits=None, format=None, transform=None, precision=None, **kw)


def ok_record(s, top1=80.0, **extra):
    return {"run_id": s.run_id, "status": "ok", "spec": s.to_dict(), "metrics": {"top1": top1}, **extra}


def test_the_run_id_is_a_stable_hash_of_the_whole_spec():
    a = spec()
    assert a.run_id == spec().run_id
    assert a.run_id == spec(hparams={"epochs": 10, "lr": 1.0}).run_id  # key order is irrelevant
    others = [spec(seed=44), spec(task="textures"), spec(method="full"), spec(stage="tune"),
              spec(hparams={"lr": 0.5, "epochs": 10}), spec(checkpoint="/w.pth"), spec(image_size=64),
              spec(normalize="imagenet"), spec(interpolation="bilinear"), spec(splits=("train+val", "test")),
              spec(format="fgvc-json"), spec(transform="crop-flip"), spec(precision="bf16")]
    assert len({a.run_id, *(o.run_id for o in others)}) == 1 + len(others)
    assert RunSpec.from_dict(json.loads(json.dumps(a.to_dict()))).run_id == a.run_id


def test_a_record_written_before_the_ids_covered_splits_and_precision_is_still_this_run(tmp_path):
    old = v1_spec()
    # the id records were written under before: unchanged by the later fields at their old values
    assert old.run_id == old.v1_run_id == spec().v1_run_id == "b02f17352eacc455"
    # engine settings added since, at the values those runs had, leave the old id alone
    later = spec(hparams={"lr": 1.0, "epochs": 10, "lr_schedule": "step", "drop_path": 0.0})
    assert later.v1_run_id == "b02f17352eacc455" and spec(hparams={"lr": 1.0, "epochs": 10,
                                                                   "drop_path": 0.1}).v1_run_id != later.v1_run_id
    store = Store(tmp_path)
    metrics = {"top1": 71.0, "train_split": "train800val200", "eval_split": "test"}
    store.write(old, {**ok_record(old), "metrics": metrics})
    assert store.is_ok(spec())                      # recognised as done by today's spec
    assert store.read(spec())["metrics"]["top1"] == 71.0
    assert not store.is_ok(spec(splits=("train800", "val200")))   # other splits: another run
    assert not store.is_ok(spec(precision="bf16"))  # asked for another precision: another run
    assert not store.is_ok(spec(normalize="imagenet"))


def test_normalisation_and_interpolation_change_the_run_id_and_old_records_keep_theirs():
    a = v1_spec()
    assert len({a.run_id, v1_spec(normalize="imagenet").run_id, v1_spec(interpolation="bilinear").run_id}) == 3
    old = {k: v for k, v in a.to_dict().items() if k in ("suite", "task", "method", "seed", "stage", "backbone",
                                                           "checkpoint", "image_size", "hparams")}
    assert RunSpec.from_dict(old).run_id == a.run_id == "b02f17352eacc455"  # the id before the change


def test_records_land_in_the_design_layout_and_leave_no_temp_files(tmp_path):
    store = Store(tmp_path)
    s = spec()
    path = store.write(s, ok_record(s))
    assert path == tmp_path / "demo" / "linear" / "mnist" / f"{s.run_id}.json"
    assert store.is_ok(s)
    assert os.listdir(path.parent) == [path.name]
    assert [r["run_id"] for r in store.records("demo")] == [s.run_id]


def test_a_writer_that_dies_mid_write_leaves_the_old_record_intact(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"status": "ok"})

    class Boom(Exception):
        pass

    def explode(*a, **k):
        raise Boom

    monkeypatch.setattr(json, "dump", explode)
    with pytest.raises(Boom):
        write_json_atomic(path, {"status": "failed"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert os.listdir(tmp_path) == ["r.json"]


def _hold(path, ready):
    lock = RunLock.acquire(path)
    assert lock is not None
    ready.set()
    time.sleep(60)


def test_a_run_lock_excludes_other_processes_and_is_freed_when_its_holder_is_killed(tmp_path):
    path = tmp_path / "x.lock"
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(path, ready))
    holder.start()
    try:
        assert ready.wait(20)
        assert RunLock.acquire(path) is None
        assert RunLock.is_held(path)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(20)
        assert not RunLock.is_held(path)
        lock = RunLock.acquire(path)
        assert lock is not None
        lock.release()
        assert not path.exists()
    finally:
        if holder.is_alive():
            holder.kill()


def test_plans_are_saved_once_and_read_back(tmp_path):
    store = Store(tmp_path)
    specs = [spec(), spec(seed=1)]
    p1 = store.save_plan("demo", specs)
    p2 = store.save_plan("demo", list(reversed(specs)))
    assert p1 is not None and p1.is_file()
    assert p2 is None  # the same plan in another order is the same plan, written once
    assert len(list((tmp_path / "demo" / "_plans").glob("*.json"))) == 1
    assert {s.run_id for s in store.planned_specs("demo")} == {s.run_id for s in specs}
    assert store.suites() == ["demo"]


def test_a_force_command_joins_the_live_wave_and_starts_a_new_one_after_it(tmp_path):
    store = Store(tmp_path)
    first, second, later = "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:05+00:00", "2026-01-02T00:00:00+00:00"
    with store.force_wave("demo", first) as a:
        with store.force_wave("demo", second) as b:  # started while the first still runs
            assert a == b == first
    with store.force_wave("demo", later) as c:  # nobody of the first wave is alive any more
        assert c == later
    assert len(list((tmp_path / "demo" / "_force").glob("*.wave"))) == 1
