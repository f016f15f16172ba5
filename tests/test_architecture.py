"""The seams: every extension point is one file (or a plugin) found by its registry, the CLI only
parses and renders, and the defects the architecture step fixed stay fixed."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench import accel
from bench.campaign import Request, preflight
from bench.errors import UserError
from bench.executors import EXECUTORS
from bench.formats import FORMATS
from bench.method import METHODS
from bench.reports import WRITERS
from bench.sources import SOURCES
from helpers import REPO, bench, record_files


def test_every_module_imports_on_python_3_10_where_there_is_no_tomllib():
    """Python 3.10 has no tomllib (the project declares 3.10): every module must import and a
    suite and a SLURM config must load with tomli alone."""
    code = textwrap.dedent("""
        import sys, importlib, pkgutil, pathlib, tempfile
        sys.modules["tomllib"] = None          # as on Python 3.10: `import tomllib` fails
        import bench
        for info in pkgutil.walk_packages(bench.__path__, "bench."):
            importlib.import_module(info.name)
        from bench.suite import load_suite
        from bench.executors.submitit import slurm_options
        assert load_suite("vtab1k").name == "vtab1k"
        cfg = pathlib.Path(tempfile.mkdtemp()) / "c.toml"
        cfg.write_text('[slurm]\\npartition = "gpu"\\n')
        assert slurm_options(cfg, {}).partition == "gpu"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_the_cli_parses_and_renders_and_no_other_module_parses_arguments():
    package = REPO / "bench"
    parsers = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if "argparse" in _imports(p)}
    assert parsers <= {"cli.py", "pretrain_demo.py"}  # pretrain_demo is a script of its own
    cli = _imports(package / "cli.py")
    # the run flow, the protocol, the engine and the executors' job side are not the CLI's
    assert not {".protocol", ".runs", ".engine", ".spec"} & cli, cli


def test_each_extension_point_has_its_built_ins_one_file_each():
    assert {"linear", "full", "vpt-shallow", "vpt-deep", "lion"} <= set(METHODS.names())
    assert set(FORMATS.names()) >= {"vtab1k-folder", "fgvc-json", "imagefolder"}
    assert set(SOURCES.names()) >= {"demo"}
    assert set(EXECUTORS.names()) >= {"local", "slurm", "submitit-local"}
    assert set(WRITERS.names()) >= {"md", "latex", "csv", "plots"}
    for registry, folder in ((FORMATS, "bench/formats"), (EXECUTORS, "bench/executors"),
                             (WRITERS, "bench/reports"), (SOURCES, "bench/sources")):
        for name, item in registry.items().items():
            module = sys.modules[item.__module__].__file__
            assert Path(module).parent == REPO / folder, (name, module)


def test_a_plugin_that_reuses_a_built_in_name_is_told_so_and_the_built_in_stays(tmp_path):
    plugin = tmp_path / "clash.py"
    plugin.write_text(textwrap.dedent('''
        from bench.model import PeftModel, freeze, make_head
        from bench.registry import register_method

        @register_method("linear")
        def build(backbone, num_classes, hparams):
            return PeftModel(freeze(backbone), make_head(backbone.num_features, num_classes))
    '''))
    proc = bench("list", "methods", "--plugin", str(plugin))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1
    assert f"plugin {plugin} registers method 'linear', which bench.methods.linear already registers" in \
        proc.stderr.replace("\n", "")


# ---- the README's ten-line examples of the other extension points, used as a user would
FORMAT_PLUGIN = '''
from bench.formats import DataFormat, SplitItems, register_format

@register_format("csv-list")
class CSVList(DataFormat):
    layout = "expected <data-root>/<task>/<split>.csv, lines '<image path>,<label>'"

    def read_split(self, task, folder, split, strict=True):
        path = folder / f"{split}.csv"
        rows = [line.rsplit(",", 1) for line in path.read_text().splitlines() if line]
        return SplitItems(task.name, split, [(folder / p, int(y)) for p, y in rows], str(path))
'''

EXECUTOR_PLUGIN = '''
from pathlib import Path
from bench.executors import Executor, Launch, register_executor
from bench.runs import run_specs
from bench.suite import load_suite

@register_executor("backwards")
class Backwards(Executor):
    in_process = True  # runs here, last spec first

    def launch(self, specs, ctx, store, suite, command, on_done=None):
        outcome = run_specs(specs[::-1], load_suite(ctx.suite_path), Path(ctx.data_root), store,
                            ctx.engine, force_since=ctx.force_since, on_done=on_done)
        return Launch(specs, outcome=outcome)
'''

WRITER_PLUGIN = '''
from bench.reports import ReportWriter, register_writer

@register_writer("json")
class JSON(ReportWriter):
    suffix = "json"  # written to <suite>_<stage>.json

    def render(self, report):
        return report.mean.to_json(orient="index")
'''


def test_a_new_format_executor_and_report_writer_are_one_file_each(toy_suite, tmp_path):
    suite, data = toy_suite
    for name, text in (("fmt", FORMAT_PLUGIN), ("exe", EXECUTOR_PLUGIN), ("out", WRITER_PLUGIN)):
        (tmp_path / f"{name}.py").write_text(text)
    # the toy data again, listed in the plugin's format
    for task in ("colors", "more_colours"):
        for split in ("train800val200", "test"):
            lines = (data / task / f"{split}.txt").read_text().split("\n")
            (data / task / f"{split}.csv").write_text("\n".join(",".join(line.rsplit(" ", 1))
                                                               for line in lines if line))
    csv_suite = tmp_path / "toy-csv.toml"
    csv_suite.write_text(suite.read_text().replace('format = "vtab1k-folder"', 'format = "csv-list"'))
    results = tmp_path / "results"
    plugins = ["--plugin", str(tmp_path / "fmt.py"), "--plugin", str(tmp_path / "exe.py")]
    run = bench("run", "--suite", str(csv_suite), "--data-root", str(data), "--methods", "linear",
                "--executor", "backwards", "--results", str(results), "--quiet", *plugins)
    assert run.returncode == 0, run.stdout + run.stderr
    recs = [json.loads(p.read_text()) for p in record_files(results)]
    assert len(recs) == 2 and all(r["status"] == "ok" and r["spec"]["format"] == "csv-list" for r in recs)
    assert [r["spec"]["task"] for r in sorted(recs, key=lambda r: r["started_at"])] == ["more_colours", "colours"]
    report = bench("report", "--suite", str(csv_suite), "--results", str(results), "--format", "json,md",
                   "--plugin", str(tmp_path / "out.py"), "--plugin", str(tmp_path / "fmt.py"),
                   "--out", str(tmp_path / "tables"))
    assert report.returncode == 0, report.stderr
    table = json.loads((tmp_path / "tables" / "toy_final.json").read_text())
    assert set(table) == {"linear"} and table["linear"]["colours"] > 0


# ---- the defects the step fixed
def test_array_jobs_receive_the_engine_options_as_given(toy_suite, tmp_path):
    suite, data = toy_suite
    c = preflight(Request(suite=str(suite), methods="linear", data_root=str(data), results=str(tmp_path / "r"),
                          executor="submitit-local", executor_options={}, workers=3, compile=True,
                          checkpoint_interval=7.0))
    engine = c.context.engine
    assert (engine.workers, engine.compile, engine.checkpoint_interval) == (3, True, 7.0)
    assert not (tmp_path / "r").exists()  # pre-flight writes nothing


def test_a_bad_method_setting_fails_before_anything_is_submitted(toy_suite, tmp_path):
    suite, data = toy_suite
    results = tmp_path / "results"
    proc = bench("run", "--suite", str(suite), "--data-root", str(data), "--methods", "lion",
                 "--executor", "submitit-local", "--set", "lion.sparsity=2", "--results", str(results))
    assert proc.returncode == 2 and "sparsity=2.0 is not allowed" in proc.stderr
    assert not results.exists()


def test_what_only_a_built_model_can_refuse_is_refused_at_the_door(tmp_path):
    """LION's token input layer needs a ViT: building each method once in pre-flight finds it."""
    import timm
    from safetensors.torch import save_file

    from helpers import TOY_SUITE, write_vtab_task

    data = tmp_path / "data"
    write_vtab_task(data, "colors", 3, seed=1)
    write_vtab_task(data, "more_colours", 4, seed=2)
    suite = tmp_path / "toy.toml"
    suite.write_text(TOY_SUITE.format(epochs=2))
    weights = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=0).state_dict().items()},
              str(weights))
    with pytest.raises(UserError, match="input_space='token' .* needs a timm VisionTransformer"):
        preflight(Request(suite=str(suite), methods="lion", data_root=str(data), results=str(tmp_path / "r"),
                          backbone="test_resnet", checkpoint=str(weights), overrides=["lion.input_space=token"]))
    assert not (tmp_path / "r").exists()


def test_tf32_is_on_for_a_cuda_run_and_restored_afterwards():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with accel.tf32(torch.device("cuda", 0)):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        with accel.tf32(torch.device("cpu")):
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_no_method_calls_private_timm_functions():
    for path in (REPO / "methods").glob("*.py"):
        text = path.read_text()
        assert "._pos_embed" not in text and "._intermediate" not in text, path.name
