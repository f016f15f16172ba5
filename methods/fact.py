"""FacT (Jie and Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer",
AAAI 2023, arXiv 2212.03145): the weight updates of all blocks as one tensor, factorised, with
the factors U and V shared by every layer. Two factorisations, registered as two methods of this
one file because they share everything but the core: `fact-tt` (tensor-train) and `fact-tk`
(Tucker).

Definition (held by tests/test_comparison_methods.py and the contract test):
- updates on the outputs of each block's `attn.qkv`, `attn.proj`, `mlp.fc1` and `mlp.fc2`, from
  the layer's own input: U = Linear(D, r), V = Linear(r, D), no biases, shared by all layers;
  V zero, so FacT starts as the backbone; dropout 0.1 after the core; scale s;
- per block, twelve r x r slices of the core: q, k, v (qkv's three row blocks), o (proj), four
  for fc1 (its 4D outputs as four D-wide chunks) and four for fc2 (its 4D inputs as four chunks):
  qkv += s [V dp(S_q U x), V dp(S_k U x), V dp(S_v U x)]; proj += s V dp(S_o U h);
  fc1 += s [V dp(S_fc1,c U x)]_c; fc2 += s V dp(sum_c S_fc2,c U x_c);
- TT: every slice is its own parameter (nn.Linear's default init): 2 D r + 12 L r^2 (ViT-B/16,
  r = 8: 21,504); TK: S_(block, slot) = C x_3 P[:, 12 block + slot] with a core C (r x r x r) and
  P (r x 12 L), both xavier-uniform: 2 D r + 12 L r + r^3 (r = 32: 86,528);
- mergeable: each slice's update is the matrix s V S U, folded into the layer's weight.
The MLP must be 4 times the model width (the factorisation cuts fc1 and fc2 into four D-wide
chunks), and qkv fused; other ViTs are refused naming the module.
Recipe: the AdamW recipe of `bench/recipes.py`. FacT's own configs pick rank and scale per task
on test accuracy; here the scale is a setting searched on val200 with --protocol vtab.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from bench.errors import UserError
from bench.method import Setting, register_method
from bench.model import PeftModel, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID
from bench.targets import OutputHook, block_modules, fused_qkv, remove_hooks

SLOTS = 12  # q, k, v, o, fc1 x 4, fc2 x 4
Q, K, V_, O, FC1, FC2 = 0, 1, 2, 3, 4, 8


class FacTHook:
    """The update of one layer of one block; the shared factors live on the model."""

    def __init__(self, model: "FacTModel", block: int, kind: str):
        self.model, self.block, self.kind = model, block, kind

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        m = self.model
        S = m.slices(self.block)                                   # (12, r, r)
        s, drop, U, V = m.scale, m.drop, m.U, m.V
        if self.kind == "qkv":
            u = U(x)
            delta = torch.cat([V(drop(u @ S[j].T)) for j in (Q, K, V_)], dim=-1)
        elif self.kind == "proj":
            delta = V(drop(U(x) @ S[O].T))
        elif self.kind == "fc1":
            u = U(x)
            delta = V(drop(torch.stack([u @ S[FC1 + c].T for c in range(4)], dim=-2))).flatten(-2)
        else:  # fc2: its 4D-wide input as four D-wide chunks
            u = U(x.unflatten(-1, (4, -1)))                        # (..., 4, r)
            delta = V(drop(sum(u[..., c, :] @ S[FC2 + c].T for c in range(4))))
        return out + s * delta.to(out.dtype)


def _layers(backbone, method: str):
    qkvs = fused_qkv(backbone, method)
    projs = block_modules(backbone, "attn.proj", method)
    fc1s = block_modules(backbone, "mlp.fc1", method)
    fc2s = block_modules(backbone, "mlp.fc2", method)
    for i, fc1 in enumerate(fc1s):
        if fc1.out_features != 4 * fc1.in_features:
            raise UserError(f"{method} cuts blocks.N.mlp.fc1 into four model-wide chunks, so it needs an MLP 4 "
                            f"times the model width; blocks.{i}.mlp.fc1 is Linear({fc1.in_features}, "
                            f"{fc1.out_features})")
    return qkvs, projs, fc1s, fc2s


class FacTModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict, core: str, method: str):
        qkvs, projs, fc1s, fc2s = _layers(backbone, method)
        freeze(backbone)
        # the backbone stays in train mode while training: its drop-path is part of the recipe
        super().__init__(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
        dim, r, blocks = qkvs[0].in_features, hp["r"], len(qkvs)
        self.core_kind, self.method, self.scale = core, method, hp["scale"]
        self.U = nn.Linear(dim, r, bias=False)
        self.V = nn.Linear(r, dim, bias=False)
        nn.init.zeros_(self.V.weight)
        self.drop = nn.Dropout(hp["dropout"])
        if core == "tt":
            # nn.Linear's default init of each slice: uniform within 1 / sqrt(fan_in), where the
            # source's fc2 core Linear(4r, r) has fan_in 4r
            self.tt = nn.Parameter(torch.empty(blocks, SLOTS, r, r))
            with torch.no_grad():
                self.tt[:, :FC2].uniform_(-1 / math.sqrt(r), 1 / math.sqrt(r))
                self.tt[:, FC2:].uniform_(-1 / math.sqrt(4 * r), 1 / math.sqrt(4 * r))
        else:
            self.C = nn.Parameter(torch.empty(r, r, r))
            self.P = nn.Parameter(torch.empty(r, SLOTS * blocks))
            nn.init.xavier_uniform_(self.C)
            nn.init.xavier_uniform_(self.P)
        for i, layers in enumerate(zip(qkvs, projs, fc1s, fc2s)):
            for layer, kind in zip(layers, ("qkv", "proj", "fc1", "fc2")):
                layer.register_forward_hook(OutputHook(FacTHook(self, i, kind)))

    def slices(self, block: int) -> torch.Tensor:
        """The block's twelve r x r core slices."""
        if self.core_kind == "tt":
            return self.tt[block]
        p = self.P[:, block * SLOTS:(block + 1) * SLOTS]          # (r, 12)
        return torch.einsum("abk,kj->jab", self.C, p)

    def _delta(self, S: torch.Tensor) -> torch.Tensor:
        return self.scale * self.V.weight @ S @ self.U.weight      # (D, D)

    def merged(self) -> PeftModel:
        model = copy.deepcopy(self)
        qkvs, projs, fc1s, fc2s = _layers(model.backbone, self.method)
        d = model.U.in_features
        with torch.no_grad():
            for i in range(len(qkvs)):
                S = model.slices(i)
                for j, rows in ((Q, slice(0, d)), (K, slice(d, 2 * d)), (V_, slice(2 * d, 3 * d))):
                    qkvs[i].weight[rows] += model._delta(S[j]).to(qkvs[i].weight.dtype)
                projs[i].weight += model._delta(S[O]).to(projs[i].weight.dtype)
                for c in range(4):
                    fc1s[i].weight[c * d:(c + 1) * d] += model._delta(S[FC1 + c]).to(fc1s[i].weight.dtype)
                    fc2s[i].weight[:, c * d:(c + 1) * d] += model._delta(S[FC2 + c]).to(fc2s[i].weight.dtype)
        remove_hooks(model.backbone)
        return PeftModel(model.backbone, model.head, frozen_backbone=True)


def _count(core: str):
    def trainable_params(backbone, num_classes, hp) -> int:
        d, r, blocks = backbone.embed_dim, hp["r"], len(backbone.blocks)
        cores = SLOTS * blocks * r * r if core == "tt" else SLOTS * blocks * r + r ** 3
        return 2 * d * r + cores + backbone.num_features * num_classes + num_classes
    return trainable_params


def _settings(rank: int, ranks: str) -> dict:
    return {"r": Setting(rank, f"rank of the factors U, V and of the core (FacT's configs: {ranks})", min=1),
            "scale": Setting(1.0, "scale s of the update (FacT's configs: 0.01 to 100 per task)", above=0.0),
            "dropout": Setting(0.1, "dropout after the core", min=0.0, below=1.0)}


PAPER = "Jie and Deng, FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer, AAAI 2023"


@register_method(
    "fact-tt",
    defaults=ADAMW,
    settings=_settings(8, "4, 8 or 16"),
    summary="tensor-train factorised updates of qkv, proj, fc1 and fc2, U and V shared by all blocks; frozen ViT",
    paper=PAPER + " (TT)",
    formula=_count("tt"),
    grid={**ADAMW_GRID, "scale": [0.1, 1.0, 10.0]},
    identity_at_init=True,
)
def build_tt(backbone, num_classes, hparams):
    """FacT-TT: one r x r core slice per layer and block."""
    return FacTModel(backbone, num_classes, hparams, "tt", "fact-tt")


@register_method(
    "fact-tk",
    defaults=ADAMW,
    settings=_settings(32, "16 or 32"),
    summary="Tucker-factorised updates of qkv, proj, fc1 and fc2 (one r^3 core), U and V shared; frozen ViT",
    paper=PAPER + " (TK)",
    formula=_count("tk"),
    grid={**ADAMW_GRID, "scale": [0.1, 1.0, 10.0]},
    identity_at_init=True,
)
def build_tk(backbone, num_classes, hparams):
    """FacT-TK: every slice from one r x r x r core and a mixing matrix P."""
    return FacTModel(backbone, num_classes, hparams, "tk", "fact-tk")
