"""AdaptFormer (Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual
Recognition", NeurIPS 2022): a parallel bottleneck beside each block's MLP, on a frozen ViT.

Definition (ShoufaChen/AdaptFormer `models/custom_modules.py`, `ffn_adapter_layernorm_option=
"none"`, `init_option="lora"`): with x the token entering the MLP sub-block (before `norm2`),
x -> x + drop_path(mlp(norm2(x))) + s * up(drop(ReLU(down(x)))); down Linear(D, d) with
nn.Linear's default init, up Linear(d, D) with weight zero, both biases zero (so AdaptFormer
starts as the backbone); s = 0.1, dropout 0.1; d = 64 in its paper (`dim`; 8 in the VTAB-1k
reproductions). Trainable: L * (2 D d + d + D) (ViT-B/16: d = 64: 1,189,632; d = 8: 156,768)
+ head. Where we differ: the branch is added to the MLP's output before the block's drop-path,
which then covers it too (AdaptFormer has no drop-path on its branch). Recipe: the AdamW recipe
of `bench/recipes.py`; tune grid lr x weight decay x s, as PETL_Vision searched it.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.method import Setting, register_method
from bench.model import PeftModel, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID
from bench.targets import InputHook, OutputHook, block_modules


class ParallelAdapter(nn.Module):
    def __init__(self, dim: int, width: int, scale: float, dropout: float):
        super().__init__()
        self.down, self.up = nn.Linear(dim, width), nn.Linear(width, dim)
        self.act, self.drop, self.scale = nn.ReLU(), nn.Dropout(dropout), scale
        for layer in (self.down, self.up):
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.up.weight)
        self._x = None

    def remember(self, x: torch.Tensor) -> torch.Tensor:
        """norm2's pre-hook: the token entering the MLP sub-block."""
        self._x = x
        return x

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        branch = self.up(self.drop(self.act(self.down(self._x))))
        self._x = None
        return out + self.scale * branch.to(out.dtype)


class AdaptFormerModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        norms = block_modules(backbone, "norm2", "adaptformer", nn.Module)
        mlps = block_modules(backbone, "mlp", "adaptformer", nn.Module)
        freeze(backbone)
        super().__init__(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
        self.adapters = nn.ModuleList(ParallelAdapter(backbone.embed_dim, hp["dim"], hp["scale"], hp["dropout"])
                                      for _ in mlps)
        for norm, mlp, adapter in zip(norms, mlps, self.adapters):
            norm.register_forward_pre_hook(InputHook(adapter.remember))
            mlp.register_forward_hook(OutputHook(adapter))


def trainable_params(backbone, num_classes, hp) -> int:
    d, w = backbone.embed_dim, hp["dim"]
    return len(backbone.blocks) * (2 * d * w + w + d) + backbone.num_features * num_classes + num_classes


@register_method(
    "adaptformer",
    defaults=ADAMW,
    settings={"dim": Setting(64, "bottleneck width (64 in the paper; 8 in the VTAB-1k reproductions)", min=1),
              "scale": Setting(0.1, "scale s of the parallel branch", above=0.0),
              "dropout": Setting(0.1, "dropout inside the branch", min=0.0, below=1.0)},
    summary="a scaled bottleneck beside each block's MLP, on the tokens entering it; frozen ViT",
    paper="Chen et al., AdaptFormer, NeurIPS 2022",
    formula=trainable_params,
    grid={**ADAMW_GRID, "scale": [0.05, 0.1, 0.2]},
    identity_at_init=True,
)
def build(backbone, num_classes, hparams):
    """AdaptFormer's parallel adapter beside the MLP of every block."""
    return AdaptFormerModel(backbone, num_classes, hparams)
