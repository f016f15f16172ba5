"""RepAdapter (Luo et al., "Towards Efficient Visual Adaption via Structural Re-parameterization",
2023, arXiv 2302.08106): a linear adapter in front of the attention and the MLP of every block of
a frozen ViT, which folds into the layers after it once trained.

Definition (held by tests/test_comparison_methods.py and the contract test):
- on each block's LayerNorm outputs, as forward hooks on `norm1` and `norm2`:
  attn(R_a(norm1(x))), mlp(R_m(norm2(x))), with R(y) = y + s * B(dropout(A(y)));
- A: a 1x1 convolution, i.e. Linear(D, h) on each token, with bias (xavier-uniform weight, bias 0);
  B: a *grouped* 1x1 convolution h -> D with `groups` groups, with bias, weight and bias zero, so
  RepAdapter starts as the backbone; no activation; dropout 0.1; h = 8, groups = 2;
- trainable: 2 L (D h + h + D h / groups + D) (ViT-B/16: 239,808; the published "0.22M" leaves
  the biases out) + head;
- mergeable: R is linear, so W' = W (I + s B A) and b' = b + s W (B a + b_B) fold it into
  `attn.qkv` and `mlp.fc1`, which are what read norm1's and norm2's outputs; the merged model is
  the plain ViT.
Recipe: the AdamW recipe of `bench/recipes.py`. The source searched the scale s per task on
test accuracy (`search_repblock.sh`); here s is a setting searched on val200 with --protocol vtab.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench.errors import UserError
from bench.method import Setting, register_method
from bench.model import PeftModel, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID
from bench.targets import OutputHook, block_modules, remove_hooks


class RepBlock(nn.Module):
    """y -> y + s * B(dropout(A(y))), B a grouped token-wise map h -> D."""

    def __init__(self, dim: int, hidden: int, groups: int, scale: float, dropout: float):
        super().__init__()
        self.scale = scale
        self.A = nn.Linear(dim, hidden)
        nn.init.xavier_uniform_(self.A.weight)
        nn.init.zeros_(self.A.bias)
        self.B = nn.Conv1d(hidden, dim, 1, groups=groups)
        nn.init.zeros_(self.B.weight)
        nn.init.zeros_(self.B.bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, _input: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.A(y))                       # (..., h)
        shape = h.shape
        out = self.B(h.reshape(-1, shape[-1], 1))[..., 0].reshape(*shape[:-1], -1)
        return y + self.scale * out.to(y.dtype)

    def dense_B(self) -> torch.Tensor:
        """B as a (D, h) matrix: each group's block on the diagonal."""
        w = self.B.weight[..., 0]                      # (D, h / groups)
        groups = self.B.groups
        d_per, h_per = w.shape[0] // groups, w.shape[1]
        dense = w.new_zeros(w.shape[0], h_per * groups)
        for g in range(groups):
            dense[g * d_per:(g + 1) * d_per, g * h_per:(g + 1) * h_per] = w[g * d_per:(g + 1) * d_per]
        return dense

    def as_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with R(y) = M y + c in evaluation (no dropout)."""
        B = self.dense_B()
        M = torch.eye(B.shape[0], dtype=B.dtype, device=B.device) + self.scale * B @ self.A.weight
        c = self.scale * (B @ self.A.bias + self.B.bias)
        return M, c


def _targets(backbone, method: str = "repadapter"):
    norms1 = block_modules(backbone, "norm1", method, nn.LayerNorm)
    norms2 = block_modules(backbone, "norm2", method, nn.LayerNorm)
    # what reads each norm's output, where the merge folds the adapter
    qkvs = block_modules(backbone, "attn.qkv", method)
    fc1s = block_modules(backbone, "mlp.fc1", method)
    return norms1, norms2, qkvs, fc1s


class RepAdapterModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        norms1, norms2, _, _ = _targets(backbone)
        dim = norms1[0].normalized_shape[0]
        if hp["dim"] % hp["groups"] or dim % hp["groups"]:
            raise UserError(f"repadapter: groups={hp['groups']} must divide both the adapter width dim={hp['dim']} "
                            f"and the model width {dim}")
        freeze(backbone)
        # the backbone stays in train mode while training: its drop-path is part of the recipe
        super().__init__(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
        self.adapters = nn.ModuleList()
        for n1, n2 in zip(norms1, norms2):
            for norm in (n1, n2):
                block = RepBlock(dim, hp["dim"], hp["groups"], hp["scale"], hp["dropout"])
                norm.register_forward_hook(OutputHook(block))
                self.adapters.append(block)

    def merged(self) -> PeftModel:
        model = copy.deepcopy(self)
        _, _, qkvs, fc1s = _targets(model.backbone)
        readers = [layer for pair in zip(qkvs, fc1s) for layer in pair]  # the order of self.adapters
        with torch.no_grad():
            for layer, block in zip(readers, model.adapters):
                M, c = (t.to(layer.weight.dtype) for t in block.as_affine())
                bias = layer.bias if layer.bias is not None else torch.zeros_like(layer.weight[:, 0])
                new_bias = bias + layer.weight @ c
                layer.weight.copy_(layer.weight @ M)
                if layer.bias is None:
                    layer.bias = nn.Parameter(new_bias, requires_grad=False)
                else:
                    layer.bias.copy_(new_bias)
        remove_hooks(model.backbone)
        return PeftModel(model.backbone, model.head, frozen_backbone=True)


def trainable_params(backbone, num_classes, hp) -> int:
    d, h = backbone.embed_dim, hp["dim"]
    per_adapter = d * h + h + d * (h // hp["groups"]) + d
    return 2 * len(backbone.blocks) * per_adapter + backbone.num_features * num_classes + num_classes


@register_method(
    "repadapter",
    defaults=ADAMW,
    settings={"dim": Setting(8, "adapter width h", min=1),
              "groups": Setting(2, "groups of the up projection (a grouped 1x1 convolution)", min=1),
              "scale": Setting(1.0, "scale s of the adapter's branch", above=0.0),
              "dropout": Setting(0.1, "dropout after the down projection", min=0.0, below=1.0)},
    summary="linear adapters before attention and MLP (on the LayerNorm outputs), folded into qkv and fc1 "
            "after training; frozen ViT",
    paper="Luo et al., Towards Efficient Visual Adaption via Structural Re-parameterization (RepAdapter), 2023",
    formula=trainable_params,
    grid={**ADAMW_GRID, "scale": [0.1, 1.0, 10.0]},
    identity_at_init=True,
)
def build(backbone, num_classes, hparams):
    """RepAdapter: re-parameterisable adapters in front of every block's attention and MLP."""
    return RepAdapterModel(backbone, num_classes, hparams)
