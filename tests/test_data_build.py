"""`bench data build vtab1k` and `bench data check --manifest`.

The parts without TensorFlow (the task table, label rules, split arithmetic, manifests, the
resumable writer) run everywhere; the builds run TFDS's own mock (`tests/vtab_mock.py`) and skip
when the `[data]` extra is not installed (CI installs it).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.databuild import vtab1k
from bench.databuild.manifest import (Entry, compare, file_sha256, pixel_sha256, read_manifest,
                                      write_manifest)
from bench.databuild.staging import STAGING, TaskWriter
from bench.databuild.vtab1k import TASKS, label_of, rgb_of, split_strings, task_row
from bench.suite import load_suite
from helpers import REPO

HAVE_TFDS = all(__import__("importlib").util.find_spec(m) for m in vtab1k.DATA_EXTRA)
needs_tfds = pytest.mark.skipif(not HAVE_TFDS, reason="the [data] extra (TensorFlow Datasets) is not "
                                "installed: pip install -e '.[data]'")


# ---------------------------------------------------------------------------------- the table
def test_the_table_has_one_row_per_vtab1k_task_with_the_suites_class_counts():
    suite = load_suite("vtab1k")
    assert [t.name for t in TASKS] == [t.name for t in suite.tasks]
    classes = {"clevr_count": 8, "clevr_closest_object_distance": 6, "kitti_closest_vehicle_distance": 4}
    for row in TASKS:
        task = suite.task(row.name)
        if row.bins:
            assert row.bins[1] == task.num_classes
        if row.rule:
            assert classes[row.rule] == task.num_classes


@pytest.mark.parametrize("task,sizes,expected", [
    # task_adaptation's cuts on the real TFDS sizes
    ("cifar", {"train": 50000, "test": 10000},
     {"val200": "train[45000:45200]", "train800val200": "train[:800]+train[45000:45200]", "test": "test"}),
    ("caltech101", {"train": 3060, "test": 6084}, {"val200": "train[2754:2954]"}),
    ("oxford_iiit_pet", {"train": 3680, "test": 3669}, {"val200": "train[2944:3144]"}),
    ("eurosat", {"train": 27000}, {"val200": "train[16200:16400]", "test": "train[21600:]"}),
    ("resisc45", {"train": 31500}, {"val200": "train[18900:19100]", "test": "train[25200:]"}),
    ("dsprites_loc", {"train": 737280}, {"val200": "train[589824:590024]", "test": "train[663552:]"}),
    ("smallnorb_ele", {"train": 24300, "test": 24300}, {"val200": "test[:200]", "test": "test[50%:]"}),
    ("clevr_count", {"train": 70000, "validation": 15000}, {"val200": "train[63000:63200]", "test": "validation"}),
    ("dtd", {"train": 1880, "validation": 1880, "test": 1880},
     {"val200": "validation[:200]", "train800val200": "train[:800]+validation[:200]"}),
    ("diabetic_retinopathy", {"train": 35126, "validation": 10906, "test": 42670}, {"val200": "validation[:200]"}),
])
def test_split_strings_are_task_adaptations(task, sizes, expected):
    got = split_strings(task_row(task), sizes)
    assert got["train800"] == "train[:800]"
    for split, want in expected.items():
        assert got[split] == want


def test_label_rules_on_crafted_examples():
    clevr = task_row("clevr_count")
    assert [label_of(clevr, {"objects": {"size": np.zeros(n)}}) for n in (3, 4, 10)] == [0, 1, 7]

    dist = task_row("clevr_dist")

    def depth(*zs):
        return {"objects": {"pixel_coords": np.array([[0, 0, z] for z in zs], np.float32)}}
    # the closest object decides; a depth equal to a threshold stays in the bin below it
    assert [label_of(dist, depth(z, 30.0)) for z in (0.5, 8.0, 8.01, 8.5, 9.2, 9.7, 10.0, 10.5, 99.0)] \
        == [0, 0, 1, 1, 3, 4, 4, 5, 5]

    kitti = task_row("kitti")

    def scene(types, zs):
        return {"objects": {"type": np.array(types), "location": np.array([[1.0, 1.0, z] for z in zs],
                                                                         np.float32)}}
    # types 0-2 are Car, Van, Truck; a pedestrian (3) or a cyclist (5) is not a vehicle
    assert label_of(kitti, scene([0], [5.0])) == 0
    assert label_of(kitti, scene([3, 1], [2.0, 8.0])) == 0        # 8.0 is not above 8.0
    assert label_of(kitti, scene([2, 0], [30.0, 12.0])) == 1
    assert label_of(kitti, scene([0], [25.0])) == 2
    assert label_of(kitti, scene([3, 5], [3.0, 4.0])) == 3        # no vehicle
    assert label_of(kitti, scene([], [])) == 3

    loc, ori = task_row("dsprites_loc"), task_row("dsprites_ori")
    assert [label_of(loc, {"label_x_position": x}) for x in (0, 1, 2, 31)] == [0, 0, 1, 15]
    assert [label_of(ori, {"label_orientation": o}) for o in (0, 2, 3, 5, 37, 39)] == [0, 0, 1, 2, 14, 15]
    assert label_of(task_row("smallnorb_azi"), {"label_azimuth": 17, "label_elevation": 2}) == 17
    assert label_of(task_row("smallnorb_ele"), {"label_azimuth": 17, "label_elevation": 2}) == 2


def test_one_channel_images_become_rgb_as_vtab_preprocesses_them():
    binary = np.array([[[0], [1]]], np.uint8)
    assert rgb_of(task_row("dsprites_loc"), binary).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    grey = np.array([[[7], [200]]], np.uint8)
    assert rgb_of(task_row("smallnorb_azi"), grey).tolist() == [[[7, 7, 7], [200, 200, 200]]]
    rgb = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    assert rgb_of(task_row("cifar"), rgb) is rgb


# ---------------------------------------------------------------------------------- manifests
def test_png_round_trips_the_pixels_and_the_hash_knows_the_shape(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    assert file_sha256(tmp_path / "a.png") == pixel_sha256(a)
    # the same bytes in another shape are another image
    assert pixel_sha256(a.reshape(7, 5, 3)) != pixel_sha256(a)
    # a greyscale PNG hashes as the RGB image bench run decodes from it
    g = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    assert file_sha256(tmp_path / "g.png") == pixel_sha256(np.repeat(g[:, :, None], 3, axis=2))


def test_compare_names_every_kind_of_difference(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(4)]
    for i, a in enumerate(images):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    manifest = [Entry("train", i, f"{i}.png", i % 2, pixel_sha256(a)) for i, a in enumerate(images[:3])]
    manifest.append(Entry("test", 0, "t.png", 0, pixel_sha256(images[0])))
    tree = {"train": [(tmp_path / "0.png", 0), (tmp_path / "2.png", 0), (tmp_path / "gone.png", 0),
                      (tmp_path / "3.png", 1)]}
    compared, diffs = compare("toy", manifest, tree, workers=2)
    got = {(d.split, d.index, d.what) for d in diffs}
    assert got == {("train", 1, "pixels"), ("train", 1, "label"), ("train", 2, "missing"),
                   ("train", 3, "extra"), ("test", -1, "split")}
    assert compared == 3
    same = {"train": [(tmp_path / f"{i}.png", i % 2) for i in range(3)], "test": [(tmp_path / "0.png", 0)]}
    assert compare("toy", manifest, same)[1] == []
    # the same labelled images in another order: one difference, not one per image
    shuffled = {**same, "train": [same["train"][i] for i in (2, 0, 1)]}
    diffs = compare("toy", manifest, shuffled)[1]
    assert [(d.split, d.index, d.what) for d in diffs] == [("train", -1, "order")]
    assert "the same 3 images with the same labels" in diffs[0].detail


def test_a_manifest_file_is_read_back_and_a_foreign_file_is_refused(tmp_path):
    entries = [Entry("val200", 3, "images/val200/000003.png", 4, "ab" * 32)]
    write_manifest(tmp_path / "manifest.csv", entries)
    assert read_manifest(tmp_path / "manifest.csv") == entries
    (tmp_path / "other.csv").write_text("path,label\nx.png,1\n")
    from bench.errors import DataError
    with pytest.raises(DataError, match="not a peftbench manifest"):
        read_manifest(tmp_path / "other.csv")


# ---------------------------------------------------------------------------------- the writer
def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), i % 3) for i in range(n)]


def test_an_interrupted_split_resumes_and_nothing_is_visible_before_the_task_is_whole(tmp_path):
    source = _images(150)

    def crashing(n):
        for i, item in enumerate(source):
            if i == n:
                raise KeyboardInterrupt  # as a kill would stop it
            yield item

    w = TaskWriter(tmp_path, "toy", "png")
    assert w.start({"v": 1}) is False
    with pytest.raises(KeyboardInterrupt):
        w.write_split("train800", crashing(100), len(source))
    assert not (tmp_path / "toy").exists()               # bench run cannot see a half task
    written = sorted((tmp_path / STAGING / "toy" / "images" / "train800").glob("*.png"))
    assert 0 < len(written) < 150 and not (tmp_path / STAGING / "toy" / "train800.txt").exists()
    stamp = {p.name: p.stat().st_mtime_ns for p in written}

    again = TaskWriter(tmp_path, "toy", "png")
    assert again.start({"v": 1}) is True
    assert not again.split_done("train800")
    entries = again.write_split("train800", iter(source), len(source))
    assert [p.stat().st_mtime_ns for p in written] == [stamp[p.name] for p in written]  # kept, not rewritten
    assert [e.sha256 for e in entries] == [pixel_sha256(a) for a, _ in source]
    again.write_split("val200", iter(source[:10]), 10)
    again.combine("train800val200", ["train800", "val200"])
    again.write_split("test", iter(source[:5]), 5)
    final = again.finish(list(vtab1k.SPLITS), {"source": "test"})
    assert final == tmp_path / "toy" and not (tmp_path / STAGING).exists()
    lines = (final / "train800val200.txt").read_text().splitlines()
    assert len(lines) == 160 and lines[150] == "images/val200/000000.png 0"
    assert json.loads((final / "build.json").read_text())["splits"] == {
        "train800": 150, "val200": 10, "train800val200": 160, "test": 5}
    assert not [p for p in final.iterdir() if p.name.startswith(".")]


def test_a_build_started_with_other_settings_starts_that_task_again(tmp_path):
    w = TaskWriter(tmp_path, "toy", "png")
    w.start({"tfds": "a"})
    w.write_split("train800", iter(_images(3)), 3)
    other = TaskWriter(tmp_path, "toy", "png")
    assert other.start({"tfds": "b"}) is False and not other.split_done("train800")


def test_an_existing_folder_not_written_by_the_builder_is_never_overwritten(tmp_path):
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "train800.txt").write_text("mine\n")
    from bench.errors import UserError
    from bench.databuild.staging import refuse_foreign
    with pytest.raises(UserError, match="not written by `bench data build`"):
        refuse_foreign(tmp_path / "cifar")


# ---------------------------------------------------------------------------------- without TFDS
def test_without_the_data_extra_the_build_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in ("tensorflow_datasets", "cv2") else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build", "vtab1k", "--out", str(tmp_path / "out")])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "tensorflow-datasets, opencv-python-headless are not installed" in err and '.[data]' in err


def test_bench_run_never_imports_tensorflow():
    code = ("import sys, bench.cli, bench.campaign, bench.engine, bench.data, bench.runs, bench.reports; "
            "from bench.cli import build_parser; build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------------- builds (TFDS mock)
@pytest.fixture(scope="session")
def tfds_meta(tmp_path_factory):
    pytest.importorskip("tensorflow_datasets")
    from vtab_mock import write_metadata
    return write_metadata(tmp_path_factory.mktemp("tfds"))


def _build(meta, out, *extra):
    from vtab_mock import mocked_tfds
    with mocked_tfds(meta), pytest.raises(SystemExit) as exit_info:
        main(["data", "build", "vtab1k", "--out", str(out), "--tfds-dir", str(meta), *extra])
    return exit_info.value.code


@pytest.fixture(scope="session")
def built(tfds_meta, tmp_path_factory):
    """All 19 tasks built once from the mock, as PNG."""
    out = tmp_path_factory.mktemp("vtab1k")
    assert _build(tfds_meta, out) == 0
    return out


@needs_tfds
@pytest.mark.slow
def test_all_19_tasks_build_with_vtabs_splits_counts_and_labels(built, capsys):
    from vtab_mock import SIZES, example

    suite = load_suite("vtab1k")
    for row in TASKS:
        folder = built / row.name
        info = json.loads((folder / "build.json").read_text())
        sizes = SIZES[info["tfds"].split(":")[0].split("/")[0]]
        splits = split_strings(row, sizes)
        assert info["tfds_splits"] == splits and info["format"] == "png"
        lists = {s: (folder / f"{s}.txt").read_text().splitlines() for s in vtab1k.SPLITS}
        assert len(lists["train800"]) == 800 and len(lists["val200"]) == 200
        assert lists["train800val200"] == lists["train800"] + lists["val200"]
        n_test = {"test": sizes.get("test"), "validation": sizes.get("validation")}.get(row.test) \
            if isinstance(row.test, str) and "[" not in row.test else None
        if isinstance(row.test, tuple):
            n_test = sizes["train"] - sum(p * sizes["train"] // 100 for p in row.test[1:])
        if row.test == "test[50%:]":
            n_test = sizes["test"] // 2
        assert len(lists["test"]) == n_test, row.name
        num_classes = suite.task(row.name).num_classes
        labels = [int(line.rsplit(" ", 1)[1]) for s in vtab1k.SPLITS for line in lists[s]]
        assert 0 <= min(labels) and max(labels) < num_classes
        # each image and label is the source example's, through the row's label rule and RGB rule
        val_split, *pct = row.val
        start = sum(p * sizes[val_split] // 100 for p in pct)
        for split, source, offset in (("train800", "train", 0), ("val200", val_split, start)):
            for i in (0, 7, len(lists[split]) - 1):
                rel, label = lists[split][i].rsplit(" ", 1)
                ex = example(info["tfds"].split(":")[0].split("/")[0], source, offset + i)
                assert int(label) == label_of(row, ex), (row.name, split, i)
                assert file_sha256(folder / rel) == pixel_sha256(rgb_of(row, ex["image"]))
    # the crafted sources cycle through every class, so the rules produce every class
    clevr = [int(line.split()[1]) for line in (built / "clevr_dist" / "train800.txt").read_text().splitlines()]
    assert clevr[:12] == [0, 1, 2, 3, 4, 5] * 2
    kitti = [int(line.split()[1]) for line in (built / "kitti" / "train800.txt").read_text().splitlines()]
    assert kitti[:8] == [0, 1, 2, 3] * 2

    assert _check(built) == 0
    out = capsys.readouterr().out
    assert "identical to the manifests, pixel for pixel" in out and "0 differences" not in out


def _check(root, *extra):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--suite", "vtab1k", "--data-root", str(root), "--manifest", *extra])
    return exit_info.value.code


@needs_tfds
def test_jpeg_writes_what_noahs_script_writes_and_differs_from_png_pixel_by_pixel(built, tfds_meta, tmp_path,
                                                                                capsys, monkeypatch):
    out = tmp_path / "jpeg"
    assert _build(tfds_meta, out, "--tasks", "cifar", "--format", "jpeg") == 0
    lines = (out / "cifar" / "test.txt").read_text().splitlines()
    assert lines[0] == "images/test/000000.jpg 0"
    with Image.open(out / "cifar" / "images" / "test" / "000000.jpg") as img:
        assert img.format == "JPEG" and img.mode == "RGB"
    capsys.readouterr()
    assert _check(out, "--tasks", "cifar") == 0                     # against its own manifest
    monkeypatch.chdir(tmp_path)
    assert _check(out, str(built), "--tasks", "cifar") == 1         # against the PNG build's
    err = " ".join(capsys.readouterr().err.split())
    assert "cifar/train800: pixels: all 800 images differ in pixels while every label agrees" in err
    assert "cifar/train800[0]: pixels:" in err and "more differences" in err
    with open(tmp_path / "manifest-differences.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1040 + 1000 + 4 and {r["difference"] for r in rows} == {"pixels"}  # + a line per split


@needs_tfds
def test_a_killed_build_resumes_to_the_same_task(built, tfds_meta, tmp_path):
    out = tmp_path / "out"
    script = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from vtab_mock import mocked_tfds; "
              "from bench.cli import main; from pathlib import Path\n"
              f"with mocked_tfds(Path({str(tfds_meta)!r})):\n"
              f"    main(['data', 'build', 'vtab1k', '--out', {str(out)!r}, '--tfds-dir', {str(tfds_meta)!r}, "
              "'--tasks', 'dsprites_loc'])\n")
    env = {**os.environ, "VTAB_MOCK_SLOW_AFTER": "300"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    images = out / STAGING / "dsprites_loc" / "images" / "train800"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(images.glob("*.png"))) < 320:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 320 <= len(list(images.glob("*.png"))) < 800
    assert not (out / "dsprites_loc").exists()
    assert _build(tfds_meta, out, "--tasks", "dsprites_loc") == 0
    assert (out / "dsprites_loc" / "manifest.csv").read_text() == (built / "dsprites_loc" / "manifest.csv").read_text()
    assert not (out / STAGING).exists()
    # a second run finds it built and keeps it
    assert _build(tfds_meta, out, "--tasks", "dsprites_loc") == 0


@needs_tfds
def test_a_dataset_tfds_cannot_download_gets_the_steps_and_the_rest_is_built(tmp_path, capsys):
    from vtab_mock import write_metadata

    meta = write_metadata(tmp_path / "tfds")
    import shutil
    shutil.rmtree(meta / "diabetic_retinopathy_detection")   # not prepared: its files are needed
    out = tmp_path / "out"
    assert _build(meta, out, "--tasks", "diabetic_retinopathy,cifar") == 1
    captured = capsys.readouterr()
    said = " ".join(captured.out.split())
    assert said.index("diabetic_retinopathy needs files placed by hand") < said.index("cifar")
    err = " ".join(captured.err.split())
    assert (out / "cifar" / "manifest.csv").is_file() and not (out / "diabetic_retinopathy").exists()
    manual = meta / "downloads" / "manual"
    assert f"missing in {manual}: train/, test/, sample/, trainLabels.csv" in err
    assert "https://www.kaggle.com/c/diabetic-retinopathy-detection/data" in err
    assert "1 of 2 tasks are ready" in err and "Traceback" not in err


@needs_tfds
def test_tfds_download_path_has_what_it_imports(tmp_path):
    # TFDS 4.9's downloader reads its checksum files through importlib_resources without
    # declaring it (found by a real, offline build: every download failed on the import); the
    # mock skips downloads, so this checks the path directly
    tfds = vtab1k.require_tfds()
    infos = tfds.builder("cifar100:3.*.*", data_dir=str(tmp_path)).url_infos
    assert any(url.endswith("cifar-100-binary.tar.gz") for url in infos)
    assert vtab1k.url_files(tfds.builder("cifar100:3.*.*", data_dir=str(tmp_path)))[0][1] == 168513733


@needs_tfds
def test_resisc45_without_its_rar_names_it_without_touching_the_network(tmp_path):
    tfds = vtab1k.require_tfds()
    result = vtab1k.build_task(tfds, task_row("resisc45"), tmp_path / "out", tmp_path / "tfds", "png", 1,
                               log=lambda *a: None)
    assert result.status == "manual"
    assert "NWPU-RESISC45/" in result.detail and "1drv.ms" in result.detail
    assert str(tmp_path / "tfds" / "downloads" / "manual") in result.detail


# ---------------------------------------------------------------------------------- data check
def test_data_check_reports_missing_classes_and_warns_on_split_sizes(toy_suite, capsys):
    from helpers import write_vtab_task

    suite, data = toy_suite
    text = suite.read_text().replace("[splits]", "[split_sizes]\ntrain800 = 40\nval200 = 10\n\n[splits]")
    suite.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--suite", str(suite), "--data-root", str(data), "--no-decode"])
    assert exit_info.value.code == 0
    assert "warning" not in capsys.readouterr().err                 # the toy's sizes are declared
    # a task whose labels never show one of its declared classes, and a short train800
    write_vtab_task(data, "more_colours", 3, n_train=30, seed=2)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "--suite", str(suite), "--data-root", str(data), "--no-decode"])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert "more_colours: the labels of its splits (train800, val200, train800val200, test) cover 3 of " \
           "the 4 classes the suite declares (never seen: 3)" in err
    assert "warning: more_colours/train800: 30 images, the suite's protocol has 40" in err
    assert "colours/" not in err.replace("more_colours", "")


def test_a_split_size_that_is_not_a_count_is_refused(tmp_path):
    from bench.errors import UserError
    from bench.suite import parse_suite
    from bench import tomlfile
    from helpers import TOY_SUITE

    data = tomlfile.loads(TOY_SUITE.format(epochs=1) + "\n")
    data["split_sizes"] = {"train800": "800"}
    with pytest.raises(UserError, match="split_sizes.train800 must be a positive integer"):
        parse_suite(data, "toy.toml")


@pytest.mark.parametrize("argv,message", [
    (["vtab1k", "--out", "{file}"], "--out {file} is a file; pass a folder"),
    (["vtab1k", "--out", "{dir}", "--tasks", "cifar,imagenet"], "unknown task 'imagenet' in suite 'vtab1k'"),
    (["vtab1k", "--out", "{dir}", "--workers", "0"], "--workers 0: pass a positive number of threads"),
    (["fgvc", "--raw", "{dir}/nope", "--splits", "{dir}", "--out", "{dir}"], "--raw {dir}/nope is not a folder"),
])
def test_bad_build_arguments_get_one_clear_error(tmp_path, capsys, argv, message):
    (tmp_path / "f.txt").write_text("x")
    fill = {"file": str(tmp_path / "f.txt"), "dir": str(tmp_path)}
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build", *[a.format(**fill) for a in argv]])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and message.format(**fill) in err and "Traceback" not in err
