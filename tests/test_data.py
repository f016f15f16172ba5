"""The two community formats, read from image trees the tests write, and `bench data check`."""

import pytest
import torch

from bench.data import ImageDataset, build_transforms, check_labels, read_split, resolve_data_root
from bench.errors import DataError, UserError
from bench.suite import load_suite
from helpers import bench, write_fgvc_task, write_imagefolder_task, write_vtab_task


@pytest.fixture
def vtab(tmp_path):
    root = tmp_path / "vtab-1k"
    write_vtab_task(root, "cifar100", 5, n_train=8, n_val=2, n_test=6)   # an alias of "cifar"
    write_vtab_task(root, "Patch_Camelyon", 2, n_train=8, n_val=2, n_test=6)  # case differs
    return load_suite("vtab1k"), root


def test_vtab_splits_read_with_0_based_labels_and_paths_relative_to_the_task(vtab):
    suite, root = vtab
    train = read_split(suite, suite.task("cifar"), root, "train800")
    assert len(train.items) == 8
    path, label = train.items[3]
    assert path == root / "cifar100" / "images" / "train" / "0003.jpg" and label == 3
    assert path.is_file()
    both = read_split(suite, suite.task("cifar"), root, "train800val200")
    assert len(both.items) == 10
    plus = read_split(suite, suite.task("cifar"), root, "train800+val200")
    assert plus.items == both.items
    assert len(read_split(suite, suite.task("patch_camelyon"), root, "test").items) == 6


def test_images_are_rgb_resized_to_the_suite_size_and_normalised_with_the_backbone_stats(vtab, tmp_path):
    suite, root = vtab
    from PIL import Image
    grey = tmp_path / "grey.png"
    Image.new("L", (50, 30), 255).save(grey)
    ds = ImageDataset([(grey, 1)], build_transforms(suite, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=False))
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and y == 1
    assert torch.allclose(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25


def test_normalisation_follows_the_suites_normalize_key():
    from bench.data import IMAGENET_MEAN, IMAGENET_STD, normalization
    assert normalization("backbone", (0.5,) * 3, (0.5,) * 3) == ((0.5,) * 3, (0.5,) * 3)
    assert normalization("imagenet", (0.5,) * 3, (0.5,) * 3) == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalization("none", (0.5,) * 3, (0.5,) * 3) == ((0.0,) * 3, (1.0,) * 3)
    vtab, fgvc, demo = load_suite("vtab1k"), load_suite("fgvc"), load_suite("demo")
    # VPT's code: ImageNet statistics and bilinear resizing for every backbone
    assert (vtab.normalize, vtab.interpolation) == ("imagenet", "bilinear")
    assert (fgvc.normalize, fgvc.interpolation) == ("imagenet", "bilinear")
    assert (demo.normalize, demo.interpolation) == ("backbone", "bicubic")


def test_the_interpolation_key_chooses_the_resampling(vtab, tmp_path):
    from PIL import Image
    suite, _ = vtab
    path = tmp_path / "checker.png"
    pixels = (torch.arange(7 * 5).reshape(7, 5) * 37 % 256).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    out = {}
    for mode in ("bilinear", "bicubic"):
        decode, _ = build_transforms(suite, (0.0,) * 3, (1.0,) * 3, train=False, interpolation=mode)
        out[mode] = decode(Image.open(path).convert("RGB"))
        want = Image.open(path).convert("RGB").resize((224, 224), getattr(Image.Resampling, mode.upper()))
        assert torch.equal(out[mode], torch.from_numpy(__import__("numpy").array(want)).permute(2, 0, 1))
    assert not torch.equal(out["bilinear"], out["bicubic"])


def test_imagefolder_labels_are_the_sorted_class_folders_shared_by_every_split(tmp_path):
    suite = load_suite("lion-paper")
    root = tmp_path / "lion"
    classes = ["truck", "airplane", "cat"]
    write_imagefolder_task(root, "CIFAR10", classes, {"train": 9, "test": 6})
    (root / "CIFAR10" / "test" / "cat").rename(root / "CIFAR10" / "test" / ".cat-hidden")  # a split may lack a class
    task = suite.task("cifar10")
    train = read_split(suite, task, root, "train")
    assert len(train.items) == 9
    assert {p.parent.name: y for p, y in train.items} == {"airplane": 0, "cat": 1, "truck": 2}
    test = read_split(suite, task, root, "test")
    assert {p.parent.name: y for p, y in test.items} == {"airplane": 0, "truck": 2}
    with pytest.raises(DataError, match=r"split folder .*CIFAR10/val not found \(split folders there: test, train\)"):
        read_split(suite, task, root, "val")


def test_a_missing_task_folder_names_the_task_the_aliases_and_the_layout(vtab):
    suite, root = vtab
    with pytest.raises(DataError, match=r"no folder for task 'dtd'.*train800,val200,train800val200,test"):
        read_split(suite, suite.task("dtd"), root, "test")


def test_a_missing_split_file_is_named(vtab):
    suite, root = vtab
    (root / "cifar100" / "val200.txt").unlink()
    with pytest.raises(DataError, match=r"split file .*cifar100/val200.txt not found"):
        read_split(suite, suite.task("cifar"), root, "val200")


def test_malformed_lines_and_out_of_range_labels_are_errors_with_file_and_line(vtab):
    suite, root = vtab
    split = root / "cifar100" / "test.txt"
    split.write_text(split.read_text() + "images/test/0000.jpg seven\n")
    with pytest.raises(DataError, match=r"test.txt:7: expected '<image path> <integer label>'"):
        read_split(suite, suite.task("cifar"), root, "test")
    split.write_text("images/test/0000.jpg 100\n")
    items = read_split(suite, suite.task("cifar"), root, "test")
    with pytest.raises(DataError, match=r"1 labels outside 0..99"):
        check_labels(items, 100)


def test_an_unreadable_image_is_named(vtab):
    suite, root = vtab
    bad = root / "cifar100" / "images" / "train" / "0001.jpg"
    bad.write_bytes(b"not a jpeg")
    items = read_split(suite, suite.task("cifar"), root, "train800")
    ds = ImageDataset(items.items, build_transforms(suite, (0.5,) * 3, (0.5,) * 3, train=True))
    with pytest.raises(DataError, match=r"unreadable image .*0001.jpg"):
        ds[1]


def test_fgvc_json_class_ids_are_remapped_in_sorted_order_and_images_found_under_image_dir(tmp_path):
    suite = load_suite("fgvc")
    root = tmp_path / "fgvc"
    ids = [17, 3, 250]  # as released: arbitrary, unsorted, not 0-based
    write_fgvc_task(root, "CUB_200_2011", "images", ids, {"train": 6, "val": 3, "test": 3})
    task = suite.task("cub")
    train = read_split(suite, task, root, "train")
    assert {y for _, y in train.items} == {0, 1, 2}
    by_id = {p.parent.name: y for p, y in train.items}
    assert by_id == {"017.class": 1, "003.class": 0, "250.class": 2}
    assert all(p.is_file() and "CUB_200_2011/images/" in str(p) for p, _ in train.items)
    assert len(read_split(suite, task, root, "train+val").items) == 9


def test_fgvc_bad_json_is_named(tmp_path):
    suite = load_suite("fgvc")
    root = tmp_path / "fgvc"
    write_fgvc_task(root, "nabirds", "images", [1, 2], {"train": 2, "val": 2, "test": 2})
    (root / "nabirds" / "val.json").write_text('{"a.jpg": "one"}')
    with pytest.raises(DataError, match=r"val.json: class id of 'a.jpg' is 'one'"):
        read_split(suite, suite.task("nabirds"), root, "val")


def test_data_root_errors_say_what_layout_was_expected(tmp_path):
    suite = load_suite("vtab1k")
    with pytest.raises(UserError, match="pass --data-root"):
        resolve_data_root(suite, None)
    with pytest.raises(UserError, match="does not exist.*NOAH's get_vtab1k.py"):
        resolve_data_root(suite, tmp_path / "nope")


def test_data_check_reports_per_split_and_exits_non_zero_on_problems(tmp_path):
    root = tmp_path / "fgvc"
    # every one of the task's 120 classes appears somewhere, else the check reports the task
    write_fgvc_task(root, "Stanford-dogs", "Images", list(range(5, 125)), {"train": 120, "val": 2, "test": 2})
    ok = bench("data", "check", "--suite", "fgvc", "--data-root", str(root), "--tasks", "dogs")
    assert ok.returncode == 0, ok.stderr
    assert "stanford_dogs" in ok.stdout and "all splits readable" in ok.stdout
    first = sorted((root / "Stanford-dogs" / "Images").rglob("*.jpg"))
    first[0].unlink()
    first[1].write_bytes(b"garbage")
    bad = bench("data", "check", "--suite", "fgvc", "--data-root", str(root), "--tasks", "dogs")
    assert bad.returncode == 1
    assert "missing image" in bad.stderr and "unreadable image" in bad.stderr
    assert "Traceback" not in bad.stderr
    # a suite task with no folder at all is reported too
    none = bench("data", "check", "--suite", "fgvc", "--data-root", str(root), "--tasks", "cub")
    assert none.returncode == 1 and "no folder for task 'cub'" in none.stderr
