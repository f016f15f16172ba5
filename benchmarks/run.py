"""The harness's speed, each figure a ratio measured within one run (targets from issue #7).

    python benchmarks/run.py [--quick] [--threads 1] [--only harness,loader,probe,lion,gpu]

1. harness: training steps of `bench.engine.run` vs a bare PyTorch loop (forward, loss,
   backward, step) on pre-made in-memory batches; same demo ViT, method (full), optimizer,
   batch and images. The two alternate step by step: the engine's progress hook runs one bare
   step after each of its own, and an engine step is timed from the end of that bare step to
   the end of its next step, so everything the loop does, epoch boundaries included, counts.
2. loader: epochs of the same bare step fed by the harness's data path vs by pre-made in-memory
   tensors (and, for reference, by the image-by-image loader it replaced), alternating per step.
3. probe: the linear probe on cached features vs the per-epoch forward: `bench.engine.run` on a
   demo task with VTAB-1k's schedule (100 epochs, batch 128; and the demo suite's batch 32 for
   reference); training time (features included), and the same accuracy.
4. lion: memory of a LION training step vs its solver's iteration budget (5, 20, 50, solved to
   the budget, tol=0), and LION's step time and memory vs VPT-deep's.
5. gpu (CUDA only; skipped elsewhere): ViT-B/16 training throughput and achieved TFLOP/s per
   method at batch 64 and 128 in bf16, and the projected wall time of a VTAB-1k final stage.

The CPU figures compare CPU time of the main thread (one torch thread by default, so all the
arithmetic runs there): unlike wall time it does not count the moments the process waits for
a core that another process holds. Wall-time ratios are printed beside them. Nothing here is
asserted by the tests.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import accel  # noqa: E402
from bench.data import ImageDataset, build_transforms, read_split, resolve_data_root  # noqa: E402
from bench.engine import EngineOptions, build_model, make_optimizer, run, train_step  # noqa: E402
from bench.spec import plan  # noqa: E402
from bench.measure import PeakMemory, _rss_bytes  # noqa: E402
from bench.method import select_methods  # noqa: E402
from bench.suite import load_suite  # noqa: E402

console = Console(highlight=False, width=160)
ROWS: list[tuple[str, str, str, str]] = []  # figure, measured, target, result

# Test-split sizes of the 19 VTAB-1k tasks as NOAH's get_vtab1k.py writes them (the tfds test
# splits VTAB uses), for projecting the evaluation time of a final stage.
VTAB1K_TEST_IMAGES = {
    "cifar": 10000, "caltech101": 6084, "dtd": 1880, "oxford_flowers102": 6149,
    "oxford_iiit_pet": 3669, "svhn": 26032, "sun397": 21750, "patch_camelyon": 32768,
    "eurosat": 5400, "resisc45": 6300, "diabetic_retinopathy": 42670, "clevr_count": 15000,
    "clevr_dist": 15000, "dmlab": 22735, "kitti": 711, "dsprites_loc": 73728,
    "dsprites_ori": 73728, "smallnorb_azi": 12150, "smallnorb_ele": 12150,
}


def row(figure: str, measured: str, target: str = "", ok: bool | None = None) -> None:
    result = "" if ok is None else ("[green]PASS[/]" if ok else "[red]FAIL[/]")
    ROWS.append((figure, measured, target, result))
    console.print(f"  {figure}: {measured}" + (f" (target {target}: {'PASS' if ok else 'FAIL'})" if target else ""))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def demo_spec(method: str, task: str, overrides: list[str]):
    suite = load_suite("demo")
    root = resolve_data_root(suite, None)
    spec = plan(suite, select_methods(method), [suite.task(task)], [42], "final", suite.backbone, None,
                overrides)[0]
    return suite, root, spec


def premade_batches(suite, root, spec, model_mean_std, batch_size: int, shuffle_seed: int = 0):
    """The training split as float batches already in memory (what a bare loop would iterate)."""
    mean, std = model_mean_std
    items = read_split(suite, suite.task(spec.task), root, suite.splits["final"][0])
    ds = ImageDataset(items.items, build_transforms(suite, mean, std, train=True))
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = torch.tensor([y for _, y in items.items])
    order = torch.randperm(len(ys), generator=torch.Generator().manual_seed(shuffle_seed))
    return [(xs[idx], ys[idx]) for idx in order.split(batch_size)]


def bare_step(model, optimizer, x, y) -> None:
    """The step anyone would write by hand."""
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class Clock:
    """CPU time of the main thread and wall time, read together. CPU time is what the ratios
    compare: with one torch thread all the arithmetic runs on the main thread, and unlike wall
    time it does not count the moments the process waits for a core another process holds (the
    reference machine's 2 cores are shared). Wall-time ratios are printed beside them."""

    @staticmethod
    def now() -> tuple[float, float]:
        return time.thread_time(), time.perf_counter()


def ratio(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> tuple[float, float]:
    """(CPU, wall) ratio of the totals of two lists of (CPU, wall) durations."""
    return (sum(x[0] for x in a) / sum(x[0] for x in b), sum(x[1] for x in a) / sum(x[1] for x in b))


class Interleave:
    """A progress display for `bench.engine.run` that, after every training step of the engine,
    runs one bare step on the same kind of batch: the two are timed in strict alternation, so a
    slow phase of the machine slows both. An engine step's time is everything between the end
    of one bare step and the end of the engine's next step, epoch boundaries included."""

    def __init__(self, model, optimizer, batches):
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.engine: list[tuple[float, float]] = []
        self.bare: list[tuple[float, float]] = []
        self.training = False
        self.i = 0
        self.last = Clock.now()

    def add_task(self, description: str, total: int) -> int:
        self.training = description.startswith("train")
        self.i = 0
        self.last = Clock.now()
        return 0

    def update(self, task_id: int, advance: int = 1) -> None:
        if not self.training:
            return
        now = Clock.now()
        self.engine.append((now[0] - self.last[0], now[1] - self.last[1]))
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        bare_step(self.model, self.optimizer, x, y)
        self.last = Clock.now()
        self.bare.append((self.last[0] - now[0], self.last[1] - now[1]))

    def remove_task(self, task_id: int) -> None:
        self.training = False


# ------------------------------------------------------------------------------ 1. harness
def bench_harness(args) -> None:
    console.rule("1. harness training step vs a bare PyTorch loop (demo ViT, full fine-tuning, batch 32)")
    epochs = 4 if args.quick else 8
    suite, root, spec = demo_spec("full", "mnist", [f"epochs={epochs}", "warmup_epochs=1"])
    model, mean, std = build_model(spec, suite.task(spec.task).num_classes)
    batches = premade_batches(suite, root, spec, (mean, std), spec.hparams["batch_size"])
    optimizer = make_optimizer(model, spec.hparams)  # the engine's optimizer, for the bare loop too
    model.train()
    for x, y in batches:  # warm-up
        bare_step(model, optimizer, x, y)
    run(spec, suite, root, EngineOptions(device=torch.device("cpu")))  # warm-up; decodes the split once
    clock = Interleave(model, optimizer, batches)
    run(spec, suite, root, EngineOptions(device=torch.device("cpu"), progress=clock))
    skip = len(batches)  # the first epoch starts the run (memory sampler, first iterator)
    engine, bare = clock.engine[skip:], clock.bare[skip:]
    r_cpu, r_wall = ratio(engine, bare)
    n = len(engine)
    console.print(f"  {n} steps each, alternating ({epochs - 1} epochs after the first): engine "
                  f"{sum(e[0] for e in engine) / n * 1e3:.2f} ms per step, bare loop "
                  f"{sum(b[0] for b in bare) / n * 1e3:.2f} ms (CPU time); wall-time ratio {r_wall:.3f}x")
    row("1. harness training step / bare PyTorch step", f"{r_cpu:.3f}x", "<= 1.03x", r_cpu <= 1.03)


# ------------------------------------------------------------------------------- 2. loader
def bench_loader(args) -> None:
    console.rule("2. epoch fed by the harness's data path vs pre-made in-memory tensors (same bare step)")
    epochs = 4 if args.quick else 8
    suite, root, spec = demo_spec("full", "mnist", [])
    bs = spec.hparams["batch_size"]
    model, mean, std = build_model(spec, suite.task(spec.task).num_classes)
    optimizer = make_optimizer(model, spec.hparams)
    model.train()
    opts = EngineOptions(device=torch.device("cpu"))
    items = read_split(suite, suite.task(spec.task), root, suite.splits["final"][0])
    _, real = accel.loader(suite, items, mean, std, True, bs, torch.Generator().manual_seed(0), opts)
    # the pipeline this replaced: images cached one by one, then torchvision's ConvertImageDtype
    # and Normalize on each image, collated by DataLoader
    from torchvision import transforms as T

    before = (build_transforms(suite, mean, std, train=True)[0],
              T.Compose([T.ConvertImageDtype(torch.float32), T.Normalize(mean, std)]))
    per_image = torch.utils.data.DataLoader(ImageDataset(items.items, before, cache=True), batch_size=bs,
                                            shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = premade_batches(suite, root, spec, (mean, std), bs)
    for x, y in per_image:  # warm-up; fills the image-by-image loader's cache
        bare_step(model, optimizer, x, y)
    times: dict[str, list[tuple[float, float]]] = {"real": [], "tensors": [], "per_image": []}
    for _ in range(epochs):  # per step: harness loader, pre-made tensors, image-by-image loader
        iters = {"real": iter(real), "per_image": iter(per_image)}
        for i in range(len(batches)):
            for name in ("real", "tensors", "per_image"):
                t0 = Clock.now()
                x, y = batches[i] if name == "tensors" else next(iters[name])
                bare_step(model, optimizer, x, y)
                t1 = Clock.now()
                times[name].append((t1[0] - t0[0], t1[1] - t0[1]))
        for it in iters.values():  # end each epoch as a for loop would
            for _ in it:
                pass
    c0 = time.thread_time()
    for _ in real:
        pass
    only_loader = time.thread_time() - c0
    r, r_wall = ratio(times["real"], times["tensors"])
    before, _ = ratio(times["per_image"], times["tensors"])
    per_epoch = {k: sum(t[0] for t in v) / epochs for k, v in times.items()}
    console.print(f"  epoch ({len(batches)} steps), CPU time: harness loader {per_epoch['real'] * 1e3:.0f} ms, pre-made "
                  f"tensors {per_epoch['tensors'] * 1e3:.0f} ms, image-by-image loader (before) "
                  f"{per_epoch['per_image'] * 1e3:.0f} ms; the harness loader alone {only_loader * 1e3:.1f} ms "
                  f"per epoch; wall-time ratio {r_wall:.3f}x")
    row("2. epoch, harness loader / in-memory tensors", f"{r:.3f}x", "<= 1.05x", r <= 1.05)
    row("   (before: image-by-image loader / tensors)", f"{before:.3f}x")


# -------------------------------------------------------------------------------- 3. probe
class TrainClock:
    """A progress display for `bench.engine.run` that notes the CPU time (and wall time) of the
    training phase, from before the first epoch to after the last (features included)."""

    def add_task(self, description: str, total: int) -> str:
        if description.startswith("train"):
            self.start = Clock.now()
        return description

    def update(self, task_id: str, advance: int = 1) -> None:
        pass

    def remove_task(self, task_id: str) -> None:
        if task_id.startswith("train"):
            end = Clock.now()
            self.cpu, self.wall = end[0] - self.start[0], end[1] - self.start[1]


def bench_probe(args) -> None:
    epochs = 100
    rounds = 1 if args.quick else 2
    console.rule(f"3. linear probe on cached features vs per-epoch forward (demo mnist, {epochs} epochs)")
    for batch, what in ((128, "VTAB-1k's batch 128"), (32, "demo suite's batch 32")):
        suite, root, spec = demo_spec("linear", "mnist", [f"epochs={epochs}", "warmup_epochs=10",
                                                          f"batch_size={batch}"])
        run(spec, suite, root, EngineOptions(device=torch.device("cpu")))  # warm-up
        cached, plain = [], []
        for _ in range(rounds):
            for use_cache, out in ((True, cached), (False, plain)):
                clock = TrainClock()
                rec = run(spec, suite, root, EngineOptions(device=torch.device("cpu"), feature_cache=use_cache,
                                                          progress=clock))
                assert rec["metrics"]["feature_cache"] is use_cache
                out.append((clock.cpu, clock.wall, rec))
        med = statistics.median
        tc, tp = med(c[0] for c in cached), med(p[0] for p in plain)
        wc, wp = med(c[1] for c in cached), med(p[1] for p in plain)
        mc, mp = cached[0][2]["metrics"], plain[0][2]["metrics"]
        console.print(f"  {what}: training CPU time cached {tc:.2f} s (features {mc['feature_seconds']:.2f} s), "
                      f"per-epoch forward {tp:.1f} s; wall {wc:.2f} s vs {wp:.1f} s ({wp / wc:.1f}x)")
        console.print(f"    top-1 cached {mc['top1']:.2f}%, per-epoch {mp['top1']:.2f}%; final train loss "
                      f"{mc['final_train_loss']:.6f} vs {mp['final_train_loss']:.6f}")
        target = batch == 128
        head = "3. linear probe training, per-epoch / cached" if target else "   the same"
        row(f"{head} ({what})", f"{tp / tc:.1f}x", ">= 20x" if target else "", (tp / tc >= 20) if target else None)
        row(f"   same top-1 ({what})", f"{mc['top1']:.2f}% vs {mp['top1']:.2f}%", "equal",
            mc["top1"] == mp["top1"])


# --------------------------------------------------------------------------------- 4. lion
def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def step_cost(model, x, y, device, steps: int = 3) -> dict[str, float]:
    """Bytes saved for backward (exact), the peak memory of a step (CUDA: allocated tensors;
    CPU: resident memory growth, sampled), and the median time of a training step (CUDA: wall
    time; CPU: CPU time of the main thread)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    def step():
        train_step(model, optimizer, x, y)

    step()  # warm-up: optimizer state exists from here on
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.zero_grad(set_to_none=True)
    del loss
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        peak_growth = torch.cuda.max_memory_allocated(device) - base
    else:
        _trim()
        base = _rss_bytes() or 0
        with PeakMemory(device) as peak:
            step()
        peak_growth = max(0, peak.peak_bytes - base)
    return {"saved": saved, "peak": peak_growth, "seconds": step_times({"it": step}, device, steps)["it"],
            "step": step}


def step_times(steps: dict, device, n: int) -> dict[str, float]:
    """Median time of each step function, the functions taking turns (CUDA: wall time; CPU: CPU
    time of the main thread, as above)."""
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, step in steps.items():
            sync(device)
            t0 = clock()
            step()
            sync(device)
            times[name].append(clock() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_lion(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    console.rule(f"4. LION memory vs solver iterations, and LION vs VPT-deep ({device}, demo ViT, batch 32)")
    suite, root, spec = demo_spec("lion", "mnist", [])
    task = suite.task(spec.task)
    model, mean, std = build_model(spec, task.num_classes)
    x, y = premade_batches(suite, root, spec, (mean, std), 32)[0]
    x, y = x.to(device), y.to(device)
    results = {}
    for max_iter in (5, 20, 50):
        _, _, s = demo_spec("lion", "mnist", [f"max_iter={max_iter}", "tol=1e-12"])
        torch.manual_seed(0)
        model, _, _ = build_model(s, task.num_classes)
        model.to(device)
        results[max_iter] = step_cost(model, x, y, device, steps=3)
        iters = model.input_layer.stats["iterations"] / max(1, model.input_layer.stats["calls"])
        console.print(f"  max_iter {max_iter:>2} (solver ran {iters:.0f} iterations per call): saved for backward "
                      f"{results[max_iter]['saved'] / 2**20:.2f} MiB, peak growth of a step "
                      f"{results[max_iter]['peak'] / 2**20:.1f} MiB, step {results[max_iter]['seconds'] * 1e3:.0f} ms")
    flat = results[50]["saved"] / results[5]["saved"]
    row("4. LION saved activations, 50 / 5 solver iterations", f"{flat:.3f}x", "flat (1.00x)", flat <= 1.01)
    peak_ratio = results[50]["peak"] / max(results[5]["peak"], 1)
    row("   LION peak step memory growth, 50 / 5 iterations" + (" (sampled RSS)" if device.type == "cpu" else ""),
        f"{results[5]['peak'] / 2**20:.1f} -> {results[20]['peak'] / 2**20:.1f} -> "
        f"{results[50]['peak'] / 2**20:.1f} MiB ({peak_ratio:.2f}x)")
    costs = {}
    for method in ("lion", "vpt-deep"):
        _, _, s = demo_spec(method, "mnist", [])
        torch.manual_seed(0)
        model, _, _ = build_model(s, task.num_classes)
        model.to(device)
        costs[method] = step_cost(model, x, y, device, steps=1)
    alternating = step_times({m: c["step"] for m, c in costs.items()}, device, 10 if args.quick else 30)
    for method, seconds in alternating.items():
        costs[method]["seconds"] = seconds
    console.print(f"  default hyperparameters, steps taking turns: LION {costs['lion']['seconds'] * 1e3:.0f} ms, "
                  f"{costs['lion']['saved'] / 2**20:.2f} MiB saved; VPT-deep "
                  f"{costs['vpt-deep']['seconds'] * 1e3:.0f} ms, {costs['vpt-deep']['saved'] / 2**20:.2f} MiB saved")
    row("   LION / VPT-deep step time (defaults)", f"{costs['lion']['seconds'] / costs['vpt-deep']['seconds']:.2f}x")
    row("   LION / VPT-deep saved activations", f"{costs['lion']['saved'] / costs['vpt-deep']['saved']:.2f}x")


# ---------------------------------------------------------------------------------- 5. gpu


def _vit_b(device, smoke: bool):
    import timm

    torch.manual_seed(0)
    if smoke:  # the code path on a tiny ViT
        return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=32,
                                 patch_size=8, embed_dim=48, depth=2, num_heads=2).to(device)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).to(device)


class FlopCount:
    """FLOPs of what runs inside (forward and backward), by torch's own per-op formulas. Unlike
    FlopCounterMode it tracks no modules, whose hooks LION's backward-time solver trips on."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    counter.total += formula(*args, **kwargs, out_val=out)
                return out

        self.total = 0
        self.mode = Mode()

    def __enter__(self) -> "FlopCount":
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


def _throughput(model, batch: int, device, img_size: int, steps: int, train: bool,
                precision: str, compile: bool) -> tuple[float, float]:
    """(images/s, FLOPs per image) of training steps (or inference) on random images, through
    the engine's RunModel (autocast) and its step: forward, loss, backward, step."""
    dtype = torch.bfloat16 if accel.resolve_precision(precision, device) == "bf16" else None
    runner = accel.RunModel(model, device, dtype, compile=compile)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if train else None

    def step():
        if not train:
            with torch.inference_mode():
                runner.eval()
                return runner(x)
        runner.train()
        train_step(runner, optimizer, x, y)

    for _ in range(3):
        step()
    flops = 0.0
    if train:
        with FlopCount() as counter:
            step()
        flops = counter.total / batch
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t0
    return batch * steps / seconds, flops


def bench_gpu(args) -> None:
    smoke = args.gpu_smoke
    if not torch.cuda.is_available() and not smoke:
        console.rule("5. GPU: skipped (no CUDA device here)")
        row("5. GPU: ViT-B/16 throughput, TFLOP/s, VTAB-1k projection", "skipped: no CUDA device")
        return
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    img = 224 if not smoke else 32
    batches = (64, 128) if not smoke else (2, 4)
    steps = 20 if not smoke else 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU smoke test"
    console.rule(f"5. GPU: ViT-B/16 at {img}px, bf16 autocast, {name}" + (" (compiled)" if args.compile else ""))
    suite = load_suite("vtab1k")
    task = suite.task("cifar")
    from bench.spec import resolve_hparams

    table = Table(title=f"ViT-B/16 training, bf16, {name}")
    for col in ("method", "batch", "img/s", "GFLOP/img (fwd+bwd)", "TFLOP/s", "eval img/s",
                "VTAB-1k final (19 tasks x 5 seeds)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    train_images = 19 * 5 * 100 * 1000  # tasks x seeds x epochs x train800val200
    test_images = 5 * sum(VTAB1K_TEST_IMAGES.values())
    from bench.method import all_methods

    for method, m in all_methods().items():  # every registered method, plugins included
        hp = resolve_hparams(m, suite, task, [])
        model = m.build(_vit_b(device, smoke), task.num_classes, dict(hp)).to(device)
        eval_tput, _ = _throughput(model, 256 if not smoke else 4, device, img, steps, False, "bf16", args.compile)
        for batch in batches:
            tput, flops = _throughput(model, batch, device, img, steps, True, "bf16", args.compile)
            if method == "linear":  # cached features: one forward pass, then the head alone
                hours = 19 * 5 * 1000 / eval_tput / 3600
            else:
                hours = train_images / tput / 3600
            hours += test_images / eval_tput / 3600
            table.add_row(method, str(batch), f"{tput:,.0f}", f"{flops / 1e9:.3g}", f"{tput * flops / 1e12:.3g}",
                          f"{eval_tput:,.0f}", f"{hours:.1f} h" + (" (cached features)" if method == "linear" else ""))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    console.print(table)
    console.print("  projection: 100 epochs x 1,000 images x 19 tasks x 5 seeds of training plus the 19 test "
                  f"splits ({sum(VTAB1K_TEST_IMAGES.values()):,} images) x 5 seeds of evaluation at batch 256; "
                  "data decoding excluded (once per split). Hyperparameters: each method's defaults for cifar.")
    row("5. GPU: ViT-B/16 throughput, TFLOP/s, VTAB-1k projection", f"see the table ({name})")


# ---------------------------------------------------------------------------------- main
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {gpu}, Python {platform.python_version()}")


SECTIONS = {"harness": bench_harness, "loader": bench_loader, "probe": bench_probe, "lion": bench_lion,
            "gpu": bench_gpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (about half the time)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--compile", action="store_true", help="GPU section: torch.compile the models")
    p.add_argument("--gpu-smoke", action="store_true", help=argparse.SUPPRESS)  # the GPU code path on the CPU
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    console.print(f"machine: {machine()}")
    t0 = time.perf_counter()
    for name in chosen:
        SECTIONS[name](args)
    table = Table(title=f"peftbench speed ({time.perf_counter() - t0:.0f} s)")
    for col in ("figure", "measured", "target", "result"):
        table.add_column(col)
    for r in ROWS:
        table.add_row(*r)
    console.print(table)
    return 1 if any("FAIL" in r[3] for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
