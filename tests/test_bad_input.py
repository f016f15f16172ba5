"""Bad input refused at the door: one `error:` line naming what and where, exit 2, no traceback,
and a results root exactly as it was. Faults in the results root are named and skipped, and a
finished run is never lost."""

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from helpers import TOY_SUITE, ok_record, record_files, write_vtab_task


def tree(root: Path) -> list[str]:
    """What a results root holds, to compare before and after a refused command."""
    if not root.exists():
        return ["<absent>"]
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else f" {p.stat().st_size}")
                  for p in root.rglob("*"))


def huge_png(path: Path, side: int = 40000) -> None:
    """A tiny file whose header claims side x side pixels: PIL's decompression-bomb guard."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture
def toy(tmp_path):
    data = tmp_path / "data"
    write_vtab_task(data, "colors", 3, n_train=8, n_val=2, n_test=6, seed=1)
    write_vtab_task(data, "more_colours", 4, n_train=8, n_val=2, n_test=6, seed=2)
    suite = tmp_path / "toy.toml"
    suite.write_text(TOY_SUITE.format(epochs=2))
    results = tmp_path / "results"
    return suite, data, results


def suite_variant(suite: Path, old: str, new: str) -> Path:
    text = suite.read_text()
    assert old in text, old
    variant = suite.with_name("variant.toml")
    variant.write_text(text.replace(old, new, 1))
    return variant


def _empty_split(suite, data, tmp):
    (data / "colors" / "train800val200.txt").write_text("")


def _latin1_split(suite, data, tmp):
    path = data / "colors" / "test.txt"
    path.write_bytes(path.read_bytes() + "images/test/caf\xe9.jpg 1\n".encode("latin-1"))


def _bomb(suite, data, tmp):
    huge_png(data / "colors" / "images" / "train" / "0003.jpg")


# (argv, setup, what the one error line must say); {suite} {data} {tmp} are filled in
REFUSED = [
    # names that would become paths outside the results root, or none
    (["run", "--suite", "{suite:name = \"toy\"|name = \"../../elsewhere\"}"], None,
     "suite name '../../elsewhere' cannot name a folder"),
    (["run", "--suite", "{suite:name = \"toy\"|name = \"\"}"], None, "suite name '' cannot name a folder"),
    (["run", "--suite", "{suite:name = \"colours\"|name = \"a/b\"}"], None, "task name 'a/b' cannot name a folder"),
    # settings out of range or of the wrong type, from any source, for any method a file names
    (["run", "--suite", "{suite}", "--set", "lr=nan"], None, "lr=nan is not allowed"),
    (["run", "--suite", "{suite}", "--set", "lr=inf"], None, "lr=inf is not allowed"),
    (["run", "--suite", "{suite}", "--set", "momentum=-1"], None, "momentum=-1.0 is not allowed"),
    (["run", "--suite", "{suite}", "--set", "lr_batch_base=-256"], None, "lr_batch_base=-256 is not allowed"),
    (["run", "--suite", "{suite}", "--set", "lion.sparsity=2"], None, "sparsity=2.0 is not allowed"),
    (["run", "--suite", "{suite:[hparams.full]|[grid.linear]\nlr = [\"fast\"]\n\n[hparams.full]}"], None,
     "[grid.linear], method 'linear': lr='fast' is not a valid float"),
    (["run", "--suite", "{suite:[hparams.full]|[grid.linear]\nlr = [-1.0]\n\n[hparams.full]}"], None,
     "[grid.linear], method 'linear': lr=-1.0 is not allowed"),
    (["run", "--suite", "{suite:[hparams.full]|[hparams.vpt-deep]\nprompt_lenght = 5\n\n[hparams.full]}"], None,
     "method 'vpt-deep' has no hyperparameter 'prompt_lenght'"),
    (["run", "--suite", "{suite:[hparams.full]|[hparams.vtp-deep]\nlr = 5.0\n\n[hparams.full]}"], None,
     "table 'vtp-deep' names no registered method"),
    (["run", "--suite", "{suite:[hparams.full]|[hparams.lion]\ncontraction = 1.5\n\n[hparams.full]}"], None,
     "contraction=1.5 is not allowed"),
    # seeds, threads, workers
    (["run", "--suite", "{suite}", "--seeds", "-1"], None, "--seeds: -1 is not a seed"),
    (["run", "--suite", "{suite}", "--seeds", str(2**63)], None, f"--seeds: {2**63} is not a seed"),
    (["run", "--suite", "{suite}", "--threads", "0"], None, "--threads 0: use at least 1"),
    (["run", "--suite", "{suite}", "--workers", "-1"], None, "--workers -1: use 0"),
    (["run", "--suite", "{suite}", "--eval-every", "-2"], None, "--eval-every -2: use a number of epochs >= 1"),
    (["run", "--suite", "{suite}", "--stage", "tune", "--eval-every", "5"], None,
     "the 'tune' stage has none. Drop --eval-every"),
    # data that cannot train
    (["run", "--suite", "{suite}"], _empty_split, "split 'train800val200'"),
    (["run", "--suite", "{suite}"], _latin1_split, "test.txt:7: not UTF-8 text"),
    # where things go
    (["run", "--suite", "demo", "--data-root", "{tmp}/afile", "--methods", "linear"], None,
     "--data-root {tmp}/afile is a file"),
    (["run", "--suite", "{suite}", "--results", "{tmp}/afile"], None, "--results {tmp}/afile is a file"),
    (["report", "--suite", "{suite}", "--results", "{tmp}/afile"], None, "--results {tmp}/afile is a file"),
    (["status", "--results", "{tmp}/afile"], None, "--results {tmp}/afile is a file"),
    (["run", "--suite", "{suite}", "--executor", "local", "--partition", "gpu"], None,
     "--partition: only with --executor slurm or submitit-local"),
    (["run", "--suite", "{suite}", "--executor", "cloud"], None, "unknown executor 'cloud'"),
    (["report", "--suite", "{suite}", "--format", "docx"], None, "'docx' is not a table format"),
]


def _fill(arg: str, suite: Path, data: Path, tmp: Path) -> str:
    if arg.startswith("{suite:"):
        old, new = arg[len("{suite:"):-1].split("|")
        return str(suite_variant(suite, old, new))
    return arg.format(suite=suite, data=data, tmp=tmp)


@pytest.mark.parametrize("argv, setup, message", REFUSED, ids=[" ".join(a[:1] + a[3:5]) + f" #{i}"
                                                                for i, (a, _, _) in enumerate(REFUSED)])
def test_bad_input_is_refused_at_the_door_and_leaves_the_results_root_as_it_was(toy, tmp_path, capsys, argv,
                                                                                setup, message):
    suite, data, results = toy
    (tmp_path / "afile").write_text("not a folder")
    results.mkdir()
    (results / "README.md").write_text("mine")
    if setup:
        setup(suite, data, tmp_path)
    args = [_fill(a, suite, data, tmp_path) for a in argv]
    if args[0] == "run" and "--data-root" not in args and "demo" not in args:
        args += ["--data-root", str(data)]
    if "--results" not in args:
        args += ["--results", str(results)]
    before = tree(results)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, out + err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert message.format(tmp=tmp_path) in " ".join(err.split()), err
    assert tree(results) == before


def test_an_unreadable_image_found_mid_run_leaves_no_plan_and_no_folder(toy, capsys):
    suite, data, results = toy
    (data / "colors" / "images" / "train" / "0003.jpg").write_bytes(b"broken")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
              "--methods", "linear", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unreadable image" in err and "0003.jpg" in err
    assert tree(results) == ["<absent>"]


def test_a_decompression_bomb_is_an_unreadable_image_for_run_and_for_data_check(toy, capsys):
    suite, data, results = toy
    _bomb(suite, data, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--suite", str(suite), "--data-root", str(data)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert "unreadable image" in err and "decompression bomb" in " ".join(err.split()).lower()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
              "--methods", "linear", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unreadable image" in err and "0003.jpg" in err
    assert record_files(results) == [] if results.exists() else True


def test_data_check_reports_an_empty_split_and_a_file_that_is_not_utf8(toy, capsys):
    suite, data, _ = toy
    _empty_split(suite, data, None)
    _latin1_split(suite, data, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--suite", str(suite), "--data-root", str(data), "--no-decode"])
    out, err = capsys.readouterr()
    flat = " ".join(err.split())
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert "lists no images" in flat and "not UTF-8 text" in flat and "all splits readable" not in out


def test_images_that_would_change_silently_are_converted_faithfully_and_listed(toy, capsys):
    suite, data, _ = toy
    from bench.data import to_rgb

    grey16 = Image.fromarray((np.arange(72, dtype=np.uint16).reshape(8, 9) * 900).astype(np.uint16))
    rgb, how = to_rgb(grey16)
    assert len(np.unique(np.asarray(rgb))) == 72  # PIL's own convert("RGB") leaves 2 levels
    assert "16-bit" in how and "/257" in how
    images = data / "colors" / "images" / "train"
    grey16.resize((24, 24)).save(images / "0000.png")
    Image.new("CMYK", (24, 24), (10, 200, 30, 0)).save(images / "0001.jpg")
    palette = Image.new("P", (24, 24))
    palette.info["transparency"] = 0
    palette.save(images / "0002.png", transparency=0)
    split = data / "colors" / "train800.txt"
    split.write_text(split.read_text().replace("0000.jpg", "0000.png").replace("0002.jpg", "0002.png"))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--suite", str(suite), "--data-root", str(data), "--tasks", "colours"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    assert "0000.png: I;16 (16-bit greyscale) scaled to 8 bits" in out
    assert "0001.jpg: CMYK converted to RGB" in out
    assert "0002.png: P with transparency: the alpha channel was dropped" in out


def _bad_files(results: Path, good_spec) -> list[Path]:
    cell = results / "toy" / "linear" / "colours"
    cell.mkdir(parents=True, exist_ok=True)
    spec = good_spec.to_dict()
    bad = {
        "list.json": "[]",
        "nospec.json": json.dumps({"run_id": "x", "status": "ok", "metrics": {"top1": 1.0}}),
        "nofield.json": json.dumps({"run_id": "x", "status": "ok", "spec": {k: v for k, v in spec.items() if k != "seed"},
                                    "metrics": {"top1": 1.0}}),
        "latin1.json": None,
        "na.json": json.dumps({**ok_record(good_spec), "metrics": {"top1": "n/a"}}),
        "cut.json": json.dumps(ok_record(good_spec))[:40],
    }
    paths = []
    for name, text in bad.items():
        path = cell / name
        if text is None:
            path.write_bytes(json.dumps(ok_record(good_spec)).replace("ok", "\xe9").encode("latin-1"))
        else:
            path.write_text(text)
        paths.append(path)
    plan = results / "toy" / "_plans" / "broken.json"
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_text('{"specs": [{"suite": "toy"}]}')
    return paths + [plan]


def test_unreadable_files_in_the_results_root_are_named_and_skipped_by_status_report_and_run(toy, capsys):
    from bench.spec import RunSpec

    suite, data, results = toy
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
              "--methods", "linear", "--quiet"])
    assert exit_info.value.code == 0
    capsys.readouterr()
    good = RunSpec.from_dict(json.loads(record_files(results)[0].read_text())["spec"])
    bad = _bad_files(results, good)
    for argv in (["status", "--results", str(results)],
                 ["report", "--suite", str(suite), "--results", str(results), "--format", "md"],
                 ["run", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
                  "--methods", "linear", "--quiet"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out, err = capsys.readouterr()
        assert exit_info.value.code == 0, (argv, out, err)
        assert "Traceback" not in err and "error:" not in err
        flat = " ".join(err.split())
        for path in bad if argv[0] == "status" else bad[:-1]:  # only `bench status` reads plans
            assert f"{path.name}:" in flat and "skipped" in flat, (argv[0], path.name, flat)
    assert "2 ran" not in out and "0 ran, 2 already done" in out


def test_a_record_that_cannot_be_written_keeps_the_result_and_says_where(toy, capsys, monkeypatch):
    import bench.store

    suite, data, results = toy
    real = bench.store.write_json_atomic

    def full_disk(path, data_):
        if "_plans" not in str(path) and "peftbench-unsaved" not in str(path):
            raise OSError(28, "No space left on device")
        return real(path, data_)

    monkeypatch.setattr(bench.store, "write_json_atomic", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
              "--methods", "linear", "--tasks", "colours", "--quiet"])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "No space left on device" in err and "it was saved to" in err
    rescued = Path(err.split("it was saved to ")[1].split(" instead")[0])
    saved = json.loads(rescued.read_text())
    assert saved["status"] == "ok" and saved["metrics"]["top1"] >= 0 and saved["_meant_for"].endswith(".json")
    assert not list(results.rglob("*.lock"))  # the run's lock did not stay behind


def test_records_and_plans_are_readable_by_the_group_under_the_users_umask(toy):
    suite, data, results = toy
    old = os.umask(0o022)
    try:
        with pytest.raises(SystemExit):
            main(["run", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
                  "--methods", "linear", "--tasks", "colours", "--quiet"])
    finally:
        os.umask(old)
    files = record_files(results) + list(results.rglob("_plans/*.json"))
    assert files and all(p.stat().st_mode & 0o777 == 0o644 for p in files)
