"""`bench export`: what one run trained, out of the results store, to use elsewhere.

A run made with `bench run --keep-weights` keeps its trained state (what the method trains, a few
hundred KB for most PEFT methods) beside its record. `export` writes it as safetensors with a JSON
of the run's spec and metrics; with `--merge`, a method that can fold its update into the frozen
weights (LoRA, SSF, RepAdapter, FacT) also gives a plain timm checkpoint of the backbone with the
head, which `timm.create_model(name, pretrained=True, num_classes=C,
pretrained_cfg_overlay=dict(file=PATH, num_classes=C))` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .spec import RunSpec
from .store import Store
from .suite import Suite


def find_run(store: Store, suite: Suite, method: str, task: str, seed: int | None, stage: str) -> dict:
    """The latest ok record of one method x task x seed (x stage); one clear error otherwise."""
    task_name = suite.task(task).name
    found = [r for r in store.records(suite.name)
             if r.get("status") == "ok" and r["spec"]["method"] == method and r["spec"]["task"] == task_name
             and r["spec"]["stage"] == stage]
    if not found:
        raise UserError(f"no ok {stage}-stage record of {method} on {suite.name}/{task_name} under {store.root}; "
                        f"run `bench run --suite {suite.name} --methods {method} --tasks {task_name} --keep-weights` "
                        "first")
    seeds = sorted({r["spec"]["seed"] for r in found})
    if seed is None:
        if len(seeds) > 1:
            raise UserError(f"{method} on {task_name} has records of seeds {', '.join(map(str, seeds))}: "
                            "choose one with --seed")
        seed = seeds[0]
    chosen = [r for r in found if r["spec"]["seed"] == seed]
    if not chosen:
        raise UserError(f"{method} on {task_name} has no record of seed {seed}; its seeds: "
                        f"{', '.join(map(str, seeds))}")
    return max(chosen, key=lambda r: r.get("finished_at", ""))


def rebuild(record: dict, suite: Suite):
    """The run's model with its trained state loaded, and the mean and std it normalised with."""
    from safetensors.torch import load_file

    from .engine import build_model

    spec = RunSpec.from_dict(record["spec"])
    name = record.get("weights_file")
    path = Path(record["_path"]).with_name(name) if name else None
    if path is None or not path.is_file():
        raise UserError(f"the run {record['run_id']} ({spec.method} on {spec.task}, seed {spec.seed}) kept no weights"
                        f"{f' ({path} is gone)' if path is not None else ''}: rerun it with `bench run --suite "
                        f"{suite.name} --methods {spec.method} --tasks {spec.task} --seeds {spec.seed} --keep-weights "
                        "--force`")
    model, mean, std = build_model(spec, suite.task(spec.task).num_classes)
    model.load_trainable_state_dict(load_file(str(path)))
    model.eval()
    return spec, model, mean, std, path


def export(store: Store, suite: Suite, method: str, task: str, seed: int | None, stage: str, out: Path,
           merge: bool) -> list[Path]:
    import shutil

    from .runs import save_weights

    record = find_run(store, suite, method, task, seed, stage)
    spec, model, _, _, weights = rebuild(record, suite)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{suite.name}_{spec.method}_{spec.task}_seed{spec.seed}"
    written = [stem.with_suffix(".safetensors")]
    shutil.copyfile(weights, written[0])
    about = {"run_id": record["run_id"], "spec": record["spec"], "metrics": record.get("metrics", {}),
             "selection": record.get("selection"), "weights": record.get("weights"),
             "trained_state": written[0].name, "record": record["_path"]}
    if merge:
        merged = model.merged()
        if merged is None:
            raise UserError(f"{spec.method} cannot be merged into the backbone (its update is not a change of the "
                            "backbone's own weights); export without --merge")
        classes = suite.task(spec.task).num_classes
        state = {**merged.backbone.state_dict(), **{f"head.{k}": v for k, v in merged.head.state_dict().items()}}
        path = save_weights(Path(f"{stem}_merged.safetensors"), state)
        written.append(path)
        about["merged"] = {
            "file": path.name, "timm_name": spec.backbone, "num_classes": classes, "img_size": spec.image_size,
            "load": f"timm.create_model({spec.backbone!r}, pretrained=True, num_classes={classes}, "
                    f"img_size={spec.image_size}, pretrained_cfg_overlay=dict(file={str(path.resolve())!r}, "
                    f"num_classes={classes}))",
        }
    meta = stem.with_suffix(".json")
    meta.write_text(json.dumps(about, indent=1, default=str), encoding="utf-8")
    written.append(meta)
    return written


def load_merged(about: dict, folder: Path):
    """The merged checkpoint an export wrote, as timm loads it (what a user's code would do)."""
    import timm

    import bench.backbones  # noqa: F401 - registers the demo ViT with timm

    m = about["merged"]
    return timm.create_model(m["timm_name"], pretrained=True, num_classes=m["num_classes"], img_size=m["img_size"],
                             pretrained_cfg_overlay=dict(file=str(folder / m["file"]), num_classes=m["num_classes"]))


def evaluation_top1(model, spec: RunSpec, suite: Suite, data_root, mean, std) -> float:
    """Top-1 of a model on the run's evaluation split, fed as the run fed it (its transform,
    normalisation and resizing), on the CPU."""
    import torch

    from . import accel
    from .data import read_split
    from .engine import EngineOptions, evaluate

    opts = EngineOptions(device=torch.device("cpu"))
    items = read_split(suite, suite.task(spec.task), data_root, spec.splits[1])
    dataset, loader = accel.loader(suite, items, mean, std, False, spec.hparams["eval_batch_size"], None, opts,
                                   spec.interpolation)
    return 100.0 * evaluate(model, loader, torch.device("cpu")) / len(dataset)
