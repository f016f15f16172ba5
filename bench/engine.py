"""The engine: one run spec in, one run record's metrics out.

Train with the method's optimizer (SGD or AdamW, warmup + cosine per step), evaluate top-1 on
the stage's eval split after the last epoch (never a best epoch), and measure the costs.
Training keeps loss and accuracy sums on the device, so a step never waits for the host.
"""

from __future__ import annotations

import copy

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import accel
from .backbones import create_backbone
from .data import check_labels, normalization, read_split
from .errors import UserError
from .measure import PeakMemory, forward_gflops
from .method import get_method
from .model import PeftModel, warmup_cosine, warmup_cosine_per_epoch
from .spec import RunSpec
from .suite import Suite


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EngineOptions:
    device: torch.device
    workers: int = 0
    # speed (bench/accel.py); none changes what a run computes beyond float rounding (the
    # precision, which does, is the spec's)
    compile: bool = False           # torch.compile the model's forward
    channels_last: bool = False     # channels-last images (CUDA only)
    feature_cache: bool = True      # head-only methods train on features computed once
    decode_cache: str | None = None  # memory | disk | off (None: $PEFTBENCH_DECODE_CACHE or memory)
    progress: Any = None  # a rich.progress.Progress, or None for silence
    # Where this run keeps its epoch checkpoint (None: no checkpoints), and the least number of
    # seconds between two saves: a save costs a write of the trainable state and the optimizer,
    # which for full fine-tuning of a ViT-B is about 1 GB, so not after every short epoch.
    checkpoint_path: Path | None = None
    checkpoint_interval: float = 120.0
    # the campaign's protocol (fixed | vtab): what each record says about how its hyperparameters
    # were chosen
    protocol: str = "fixed"
    # final stage: also evaluate on the evaluation split every this many epochs, kept in the curve
    # as a diagnostic that nothing selects on (0: only after the last epoch)
    eval_every: int = 0
    # return the trained state (what the method trains) for `bench run --keep-weights`
    keep_weights: bool = False


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` (CUDA where there is one, else the CPU), `cpu`, `cuda` or `cuda:N`, checked here."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_model(spec: RunSpec, num_classes: int) -> tuple[PeftModel, tuple, tuple]:
    """The method's model, and the mean and std its input images are normalised with."""
    backbone = create_backbone(spec.backbone, spec.checkpoint, img_size=spec.image_size,
                               drop_path=spec.hparams.get("drop_path", 0.0))
    model = get_method(spec.method).build(backbone.model, num_classes, dict(spec.hparams))
    mean, std = normalization(spec.normalize, backbone.mean, backbone.std)
    return model, mean, std


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "loader": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    gen.set_state(state["loader"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a job preempted in the middle of a save keeps the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path | None, spec: RunSpec) -> dict[str, Any] | None:
    """The run's checkpoint, or None when there is none (or it belongs to another spec)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - a truncated file from a crash: start the run afresh
        return None
    return state if state.get("run_id") == spec.run_id else None


def make_optimizer(model: PeftModel, hp: dict[str, Any]) -> torch.optim.Optimizer:
    lr = hp["lr"] * (hp["batch_size"] / hp["lr_batch_base"] if hp["lr_batch_base"] else 1.0)
    groups = model.param_groups(hp["weight_decay"])
    if hp["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=hp["momentum"])
    if hp["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {hp['optimizer']!r}; use sgd or adamw")


def make_scheduler(optimizer: torch.optim.Optimizer, hp: dict[str, Any], steps_per_epoch: int):
    """(scheduler, stepped per step?): linear warmup then cosine decay to 0, either per step
    (`lr_schedule="step"`) or once per epoch as VPT's code does (`"epoch"`)."""
    if hp["lr_schedule"] == "epoch":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: warmup_cosine_per_epoch(e, hp["warmup_epochs"], hp["epochs"],
                                                         hp["warmup_start"], hp["lr_floor"])), False
    total_steps = hp["epochs"] * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, hp["warmup_epochs"] * steps_per_epoch, total_steps)), True


def train_step(model, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    """One optimizer step of a method's model, as every run takes it (the benchmarks time this
    very function): loss plus the method's regularization, backward, step, the post-step hook.
    Returns (logits, loss), both still on the device."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    reg = model.regularization()
    if reg is not None:
        loss = loss + reg
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.after_optimizer_step()
    return logits, loss


def evaluate(model, loader, device: torch.device, on_batch=None) -> int:
    """Correct top-1 predictions of the model (put in eval mode) over a loader."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            correct += (model(x).argmax(1) == y).sum()
            if on_batch is not None:
                on_batch()
    return int(correct.item())


def diagnostic_top1(model, loader, n: int, device: torch.device, gen: torch.Generator) -> float:
    """Top-1 on the evaluation split in the middle of training (`--eval-every`), leaving the run
    exactly as it was: the random streams and the method's own state (LION's solver statistics)
    are put back, so the run's result is the one it gives without the diagnostic."""
    rng, extra = _rng_state(gen, device), copy.deepcopy(model.extra_state())
    try:
        return 100.0 * evaluate(model, loader, device) / n
    finally:
        model.load_extra_state(extra)
        _set_rng_state(rng, gen, device)
        model.train()


def _progress_task(progress, description: str, total: int):
    if progress is None:
        return None
    return progress.add_task(description, total=total)


def _advance(progress, task_id, n: int = 1) -> None:
    if progress is not None:
        progress.update(task_id, advance=n)


def run(spec: RunSpec, suite: Suite, data_root, opts: EngineOptions) -> dict[str, Any]:
    """Train and evaluate one spec; returns the record's `metrics`, `curve` and `method_metrics`."""
    hp = spec.hparams
    task = suite.task(spec.task)
    train_split, eval_split = spec.splits or suite.splits[spec.stage]
    device = opts.device
    gen = seed_everything(spec.seed)

    train_items = read_split(suite, task, data_root, train_split)
    eval_items = read_split(suite, task, data_root, eval_split)
    for s in (train_items, eval_items):
        check_labels(s, task.num_classes)

    model, mean, std = build_model(spec, task.num_classes)
    model.to(device)
    gflops = forward_gflops(model, spec.image_size, device)

    # images decoded once; precision, compile, and features computed once for head-only methods
    train_set, train_loader = accel.loader(suite, train_items, mean, std, True, hp["batch_size"], gen, opts,
                                           spec.interpolation)
    eval_set, eval_loader = accel.loader(suite, eval_items, mean, std, False, hp["eval_batch_size"], None, opts,
                                         spec.interpolation)
    setup = accel.prepare(spec, suite, model, train_loader, eval_loader, opts)
    model, train_loader = setup.model, setup.train_loader

    optimizer = make_optimizer(model, hp)
    steps_per_epoch = len(train_loader)
    total_steps = hp["epochs"] * steps_per_epoch
    scheduler, per_step = make_scheduler(optimizer, hp, steps_per_epoch)

    curve: list[dict[str, Any]] = []
    train_seconds = 0.0
    train_images = 0
    start_epoch = 0
    resumed = load_checkpoint(opts.checkpoint_path, spec)
    if resumed is not None:
        model.load_trainable_state_dict(resumed["model"])
        model.load_extra_state(resumed["extra"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        _set_rng_state(resumed["rng"], gen, device)
        curve, train_seconds, train_images = resumed["curve"], resumed["train_seconds"], resumed["train_images"]
        start_epoch = resumed["epoch"]
    last_save = time.monotonic()

    label = f"{spec.method} · {spec.task} · seed {spec.seed}"
    bar = _progress_task(opts.progress, f"train {label}", total_steps)
    _advance(opts.progress, bar, start_epoch * steps_per_epoch)
    with PeakMemory(device) as peak, accel.tf32(device):
        for epoch in range(start_epoch, hp["epochs"]):
            model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            for x, y in train_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits, loss = train_step(model, optimizer, x, y)
                if per_step:
                    scheduler.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                _advance(opts.progress, bar)
            lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
            if not per_step:
                scheduler.step()
            model.on_epoch_end(epoch, hp["epochs"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            train_images += seen
            mean_loss = (loss_sum / max(seen, 1)).item()
            if not np.isfinite(mean_loss):
                raise DivergedError(f"training loss became {mean_loss} in epoch {epoch + 1} "
                                    f"(lr {hp['lr']}, batch {hp['batch_size']}); lower the lr")
            curve.append({"epoch": epoch + 1, "train_loss": mean_loss,
                          "train_acc": 100.0 * correct.item() / max(seen, 1),
                          "lr": lr, "seconds": seconds,
                          **model.epoch_metrics()})
            if (opts.eval_every and spec.stage == "final" and (epoch + 1) % opts.eval_every == 0
                    and epoch + 1 < hp["epochs"]):
                curve[-1]["diagnostic_top1"] = diagnostic_top1(model, eval_loader, len(eval_set), device, gen)
            if (opts.checkpoint_path is not None and epoch + 1 < hp["epochs"]
                    and time.monotonic() - last_save >= opts.checkpoint_interval):
                save_checkpoint(opts.checkpoint_path, {
                    "run_id": spec.run_id, "epoch": epoch + 1, "model": model.trainable_state_dict(),
                    "extra": model.extra_state(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": _rng_state(gen, device), "curve": curve,
                    "train_seconds": train_seconds, "train_images": train_images})
                last_save = time.monotonic()

        if opts.progress is not None:
            opts.progress.remove_task(bar)
        ebar = _progress_task(opts.progress, f"eval  {label}", len(eval_loader))
        t0 = time.perf_counter()
        top1 = 100.0 * evaluate(model, eval_loader, device, lambda: _advance(opts.progress, ebar)) / len(eval_set)
        eval_seconds = time.perf_counter() - t0
        if opts.eval_every and spec.stage == "final" and curve:
            curve[-1]["diagnostic_top1"] = top1  # the last epoch's, so the best over epochs includes it
        if opts.progress is not None:
            opts.progress.remove_task(ebar)

    counts = model.param_counts()  # after training: pruning methods count what survived
    method_metrics = model.run_metrics()
    metrics = {
        "top1": top1,
        "eval_split": eval_split,
        "train_split": train_split,
        "n_train": len(train_set),
        "n_eval": len(eval_set),
        **setup.metrics,  # precision, compile, feature cache, decode time
        **counts,
        "peak_memory_mib": peak.mib,
        "peak_memory_growth_mib": peak.growth_mib,  # over what was in use before training
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "train_throughput": train_images / train_seconds if train_seconds else None,
        "inference_throughput": len(eval_set) / eval_seconds if eval_seconds else None,
        "gflops_per_image": gflops,
        "final_train_loss": curve[-1]["train_loss"] if curve else None,
        "resumed_from_epoch": start_epoch,
        **{k: v for k, v in method_metrics.items() if k not in counts},
    }
    out = {"metrics": metrics, "curve": curve, "method_metrics": method_metrics}
    if opts.keep_weights:
        out["trainable_state"] = model.trainable_state_dict()
    return out
