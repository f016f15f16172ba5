"""Run ids, atomic records, and run locks that die with their process."""

import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from bench.store import RunLock, RunSpec, Store, write_json_atomic


def spec(**kw):
    base = dict(suite="demo", task="mnist", method="linear", seed=42, stage="final",
                backbone="peftbench_demo_vit.fmnist", checkpoint=None, image_size=32,
                hparams={"lr": 1.0, "epochs": 10})
    base.update(kw)
    return RunSpec(**base)


def test_the_run_id_is_a_stable_hash_of_the_whole_spec():
    a = spec()
    assert a.run_id == spec().run_id
    assert a.run_id == spec(hparams={"epochs": 10, "lr": 1.0}).run_id  # key order is irrelevant
    others = [spec(seed=44), spec(task="textures"), spec(method="full"), spec(stage="tune"),
              spec(hparams={"lr": 0.5, "epochs": 10}), spec(checkpoint="/w.pth"), spec(image_size=64)]
    assert len({a.run_id, *(o.run_id for o in others)}) == 1 + len(others)
    assert RunSpec.from_dict(json.loads(json.dumps(a.to_dict()))).run_id == a.run_id


def test_normalisation_and_interpolation_change_the_run_id_and_old_records_keep_theirs():
    a = spec()
    assert len({a.run_id, spec(normalize="imagenet").run_id, spec(interpolation="bilinear").run_id}) == 3
    # A record written before these fields existed holds a spec without them, at the values
    # every run had then: its id, computed then and now, is the same.
    old = {k: v for k, v in a.to_dict().items() if k not in ("normalize", "interpolation")}
    assert RunSpec.from_dict(old).run_id == a.run_id == "b02f17352eacc455"  # the id before the change


def test_records_land_in_the_design_layout_and_leave_no_temp_files(tmp_path):
    store = Store(tmp_path)
    s = spec()
    path = store.write(s, {"run_id": s.run_id, "status": "ok", "spec": s.to_dict()})
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
    assert p1 == p2
    assert {s.run_id for s in store.planned_specs("demo")} == {s.run_id for s in specs}
    assert store.suites() == ["demo"]
