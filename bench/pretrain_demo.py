"""Reproduce the demo ViT's pretrained weights: supervised pretraining on Fashion-MNIST.

    apt-get install dataset-fashion-mnist        # Debian: the 60k/10k IDX files
    python -m bench.pretrain_demo [--epochs 12] [--out bench/weights/...]

The weights are committed, so nobody needs to run this to use the demo; it exists so that the
"pretrained" in "pretrained tiny ViT" can be checked. Images (28x28 grey) are replicated to RGB
and pasted at a random scale and position onto a 32x32 black canvas, so the features do not
assume a centred object (the demo's structured tasks place shapes anywhere).
"""

from __future__ import annotations

import argparse
import gzip
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .backbones import DEMO_ARCH, demo_weights_path, peftbench_demo_vit, set_threads

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_canvas(images: torch.Tensor, gen: torch.Generator | None, size: int = 32) -> torch.Tensor:
    """uint8 (N,28,28) -> float (N,3,size,size) in [-1,1]; random scale/position/flip if gen."""
    x = images.float().div(255).unsqueeze(1)
    n = x.shape[0]
    if gen is None:
        side = 28
        offsets = torch.full((n, 2), (size - side) // 2)
    else:
        side = int(torch.randint(18, size + 1, (1,), generator=gen))
        offsets = torch.stack([torch.randint(0, size - side + 1, (n,), generator=gen),
                               torch.randint(0, size - side + 1, (n,), generator=gen)], 1)
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    canvas = torch.zeros(n, 1, size, size)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        canvas[i, :, dy:dy + side, dx:dx + side] = x[i]
    return canvas.expand(-1, 3, -1, -1).sub(0.5).div(0.5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=FASHION_MNIST_DIR)
    p.add_argument("--out", type=Path, default=demo_weights_path())
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    set_threads()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train = load_fashion_mnist(args.data, "train")
    x_test, y_test = load_fashion_mnist(args.data, "test")
    model = peftbench_demo_vit(pretrained=False, num_classes=10)
    def decays(name: str, param: torch.Tensor) -> bool:
        return param.ndim > 1 and "pos_embed" not in name and "cls_token" not in name

    decay = [p_ for n, p_ in model.named_parameters() if decays(n, p_)]
    no_decay = [p_ for n, p_ in model.named_parameters() if not decays(n, p_)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    warmup = steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = to_canvas(x_train[idx], gen)
            loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
        acc = evaluate(model, x_test, y_test)
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss_sum / steps_per_epoch:.4f} "
              f"test acc {acc:.2f}% ({time.time() - t0:.0f}s)", flush=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={
        "arch": repr(DEMO_ARCH), "pretrained_on": "Fashion-MNIST train (60k)",
        "fashion_mnist_test_top1": f"{acc:.2f}", "epochs": str(args.epochs), "seed": str(args.seed)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), Fashion-MNIST test top-1 {acc:.2f}%")


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 500):
        correct += (model(to_canvas(x[i:i + 500], None)).argmax(1) == y[i:i + 500]).sum().item()
    return 100.0 * correct / len(x)


if __name__ == "__main__":
    main()
