"""Suite files: the built-in ones carry the published facts; bad files fail with file and key."""

import csv
from pathlib import Path

import pytest

from bench.errors import UserError
from bench.suite import load_suite

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "vtab1k_tasks.csv"
REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "vtab1k_tasks.csv"


def vtab_reference():
    path = SHARED if SHARED.is_file() else REFERENCE
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and not r[0].startswith("#")]
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def test_vtab1k_has_the_19_tasks_with_groups_classes_aliases_and_vpt_prompt_lengths():
    suite = load_suite("vtab1k")
    ref = vtab_reference()
    assert [t.name for t in suite.tasks] == [r["folder"] for r in ref]
    for task, r in zip(suite.tasks, ref):
        assert task.group == r["group"]
        assert task.num_classes == int(r["num_classes"])
        assert list(task.aliases) == r["aliases"].split()
        assert task.hparams["vpt-deep"]["prompt_length"] == int(r["vpt_deep_prompts"])
    groups = [t.group for t in suite.tasks]
    assert (groups.count("natural"), groups.count("specialized"), groups.count("structured")) == (7, 4, 8)
    assert suite.splits == {"tune": ("train800", "val200"), "final": ("train800val200", "test")}
    assert suite.backbone == "vit_base_patch16_224.orig_in21k"


def test_fgvc_has_the_five_datasets_with_vpt_class_counts_and_image_dirs():
    suite = load_suite("fgvc")
    got = {t.name: (t.num_classes, t.image_dir) for t in suite.tasks}
    assert got == {"cub": (200, "images"), "nabirds": (555, "images"), "oxford_flowers": (102, ""),
                   "stanford_dogs": (120, "Images"), "stanford_cars": (196, "")}
    assert suite.task("CUB_200_2011").name == "cub"
    assert suite.transform == "crop-flip"


def test_demo_covers_the_three_vtab_groups():
    suite = load_suite("demo")
    assert {t.group for t in suite.tasks} == {"natural", "specialized", "structured"}
    assert 3 <= len(suite.tasks) <= 5


def test_aliases_resolve_case_insensitively_and_unknown_tasks_list_the_valid_ones():
    suite = load_suite("vtab1k")
    assert suite.task("Camelyon").name == "patch_camelyon"
    assert suite.task("cifar-100").name == "cifar"
    with pytest.raises(UserError, match="unknown task 'imagenet'.*valid tasks: cifar, caltech101"):
        suite.task("imagenet")


GOOD = """
name = "s"
format = "vtab1k-folder"
image_size = 32
backbone = "peftbench_demo_vit.fmnist"
[splits]
final = ["train800val200", "test"]
[[tasks]]
name = "a"
group = "natural"
num_classes = 3
"""


def write(tmp_path, text):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_a_minimal_suite_file_loads_by_path(tmp_path):
    suite = load_suite(str(write(tmp_path, GOOD)))
    assert suite.name == "s" and suite.tasks[0].num_classes == 3 and suite.seeds == (42,)


@pytest.mark.parametrize("text, message", [
    (GOOD + "colour = 1\n", r"unknown key 'colour' in \[\[tasks\]\] #1 \(a\)"),
    (GOOD.replace('image_size = 32', 'image_size = 32\ncolour = "red"'), "unknown key 'colour' in the top level"),
    (GOOD.replace('num_classes = 3', ''), r"\[\[tasks\]\] #1 \(a\) is missing the required key 'num_classes'"),
    (GOOD.replace('backbone = "peftbench_demo_vit.fmnist"', ''), "missing the required key 'backbone'"),
    (GOOD.replace('image_size = 32', 'image_size = "32"'), "key 'image_size' in the top level must be an integer, got str"),
    (GOOD.replace('num_classes = 3', 'num_classes = true'), "key 'num_classes' .* must be an integer"),
    (GOOD.replace('format = "vtab1k-folder"', 'format = "imagenet"'), "format 'imagenet' is not one of"),
    (GOOD.replace('final = ["train800val200", "test"]', 'final = ["train800val200"]'), r"splits.final must be \[train split, eval split\]"),
    (GOOD.replace('[splits]', '[splits]\nwarmup = ["a", "b"]'), r"unknown key 'warmup' in \[splits\]"),
    (GOOD + '[[tasks]]\nname = "b"\ngroup = "natural"\nnum_classes = 2\naliases = ["A"]\n', "alias 'A' .* already used by task 'a'"),
    (GOOD + "[hparams]\nlr = [1, 2]\n", "hyperparameter 'lr' in \\[hparams\\] must be a scalar"),
    ("name = 'x'\nformat = ", "not valid TOML"),
])
def test_malformed_suite_files_name_the_file_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as info:
        load_suite(str(path))
    assert str(path) in str(info.value)


def test_unknown_suite_lists_the_built_in_ones():
    with pytest.raises(UserError, match="unknown suite 'vtab'; built-in suites: demo, fgvc, lion-paper, vtab1k"):
        load_suite("vtab")
