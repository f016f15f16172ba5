"""SSF (Lian et al., "Scaling & Shifting Your Features: A New Baseline for Efficient Model
Tuning", NeurIPS 2022): y -> gamma * y + beta after the layers the paper names, on a frozen ViT.

Definition (dongzelian/SSF `models/vision_transformer.py`; held by the contract and merge tests):
- a (gamma, beta) pair on the output of `patch_embed` (after projection and flattening), of each
  block's `norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1` (before GELU), `mlp.fc2`, and of
  the final `norm`;
- gamma ~ N(1, 0.02), beta ~ N(0, 0.02): near the identity, not exactly it;
- trainable: 2 * [L * (D + 3D + D + D + 4D + D) + D + D] (ViT-B/16: 205,824) + head;
- mergeable: each pair folds into the layer it follows (W' = diag(gamma) W, b' = gamma b + beta;
  a LayerNorm's weight and bias likewise), so the merged model is the plain ViT.
Recipe: the AdamW recipe of `bench/recipes.py`. SSF's own VTAB scripts used per-task learning
rates and drop-path and timm's AugReg ImageNet-21k checkpoint, not Google's ViT-B_16.npz (the
published SSF row is labelled so in reports); weight decay skips the 1-D gammas and betas, so it
touches only the head.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench.errors import UserError
from bench.method import register_method
from bench.model import PeftModel, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID
from bench.targets import OutputHook, block_modules, blocks_of, remove_hooks

BLOCK_TARGETS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


class ScaleShift(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(dim).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.empty(dim).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out * self.gamma.to(out.dtype) + self.beta.to(out.dtype)


def targets(backbone, method: str = "ssf") -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer SSF follows, in the model's order."""
    blocks_of(backbone, method, "norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2")
    embed, norm = getattr(backbone, "patch_embed", None), getattr(backbone, "norm", None)
    if embed is None or not isinstance(getattr(embed, "proj", None), nn.Conv2d) or \
            not isinstance(getattr(embed, "norm", nn.Identity()), nn.Identity):
        raise UserError(f"ssf needs a ViT whose patch_embed is a Conv2d projection without a norm; "
                        f"{type(backbone).__name__}'s patch_embed is {type(embed).__name__}")
    if not isinstance(norm, nn.LayerNorm):
        raise UserError(f"ssf follows the final LayerNorm `norm`; {type(backbone).__name__}'s is {type(norm).__name__}")
    found = {path: block_modules(backbone, path, method, (nn.Linear, nn.LayerNorm)) for path in BLOCK_TARGETS}
    out = [("patch_embed", embed)]
    for i in range(len(backbone.blocks)):
        out += [(f"blocks.{i}.{path}", found[path][i]) for path in BLOCK_TARGETS]
    return out + [("norm", norm)]


def _width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0]
    return module.proj.out_channels  # patch_embed


class SSFModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        layers = targets(backbone)
        freeze(backbone)
        super().__init__(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
        self.pairs = nn.ModuleList(ScaleShift(_width(m)) for _, m in layers)
        for (_, module), pair in zip(layers, self.pairs):
            module.register_forward_hook(OutputHook(pair))

    def merged(self) -> PeftModel:
        model = copy.deepcopy(self)
        with torch.no_grad():
            for (_, module), pair in zip(targets(model.backbone), model.pairs):
                g, b = pair.gamma, pair.beta
                layer = module.proj if module is model.backbone.patch_embed else module
                shape = (-1,) + (1,) * (layer.weight.dim() - 1)
                layer.weight.mul_(g.view(shape))
                if layer.bias is None:
                    layer.bias = nn.Parameter(torch.zeros_like(b), requires_grad=False)
                layer.bias.mul_(g).add_(b)
        remove_hooks(model.backbone)
        return PeftModel(model.backbone, model.head, frozen_backbone=True)


def trainable_params(backbone, num_classes, hparams) -> int:
    return 2 * sum(_width(m) for _, m in targets(backbone)) + backbone.num_features * num_classes + num_classes


@register_method(
    "ssf",
    defaults=ADAMW,
    summary="scale and shift after patch embedding, every norm, qkv, proj, fc1, fc2 and the final norm",
    paper="Lian et al., SSF, NeurIPS 2022",
    formula=trainable_params,
    grid=ADAMW_GRID,
)
def build(backbone, num_classes, hparams):
    """SSF: a learned scale and shift of the features after each layer the paper names."""
    return SSFModel(backbone, num_classes, hparams)
