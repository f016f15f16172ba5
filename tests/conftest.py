"""Shared fixtures: no network, two threads, a private cache; data the tests write themselves."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

# torchvision pulls in torch's compiler stack and Triton's native library; loaded after
# TensorFlow (the data-build tests load it), that library crashes the interpreter, so every test
# process loads it first
import bench.data  # noqa: E402, F401

from helpers import TOY_SUITE, write_vtab_task  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """The demo data and any hub cache live in a per-session folder, never in $HOME."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["PEFTBENCH_CACHE"] = str(cache / "peftbench")
    os.environ["HF_HOME"] = str(cache / "hf")
    yield cache


@pytest.fixture
def toy_suite(tmp_path):
    """A two-task suite file plus its data root; returns (suite path, data root)."""
    data = tmp_path / "data"
    write_vtab_task(data, "colors", 3, seed=1)  # found through the task's alias
    write_vtab_task(data, "more_colours", 4, seed=2)
    suite = tmp_path / "toy.toml"
    suite.write_text(TOY_SUITE.format(epochs=10))
    return suite, data


