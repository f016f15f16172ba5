"""NOAH (Zhang et al., "Neural Prompt Search", arXiv 2206.04673, 2022), as "retrain the published
subnet": NOAH trains a supernet of VPT prompts, LoRA and adapters, searches per task which size
of each every layer gets, and retrains that subnet. The search is NOAH's; this method retrains
the architectures NOAH committed for the 19 VTAB-1k tasks, kept as data in
`bench/reference/noah_subnets_vtab1k.json` with their source (key RETRAIN of NOAH's
`experiments/NOAH/subnet/VTAB/ViT-B_prompt_<task>.yaml` at commit e9c55f3).

Definition (held by tests/test_comparison_methods.py and the contract test):
- per block l of a frozen ViT, three modules whose sizes come from the subnet:
  p_l prompt tokens appended after the patch tokens before the block, replacing the previous
  block's (xavier-uniform init, dropout 0.1); LoRA of rank r_l on the fused qkv with one A and one
  B for all of q, k and v (NOAH's variant, as `lora` with targets=qkv); NOAH's adapter of width
  d_l after the MLP (as `adapter`);
- trainable: D sum(p) + 4 D sum(r) + sum(2 D d + d + D) + head; over the 19 committed subnets on
  ViT-B/16 287,278 to 431,686, mean 360,134 (the Convpass report's "0.36M"; NOAH's paper prints
  0.43M);
- `subnet` names the task whose subnet to retrain; the vtab1k suite sets it per task. Its default,
  `uniform`, is not NOAH's: every layer gets `uniform` prompts, rank and width (for other suites and
  backbones of any depth); a named subnet needs a 12-block ViT.
Reports must say what this row is: the architecture was chosen by NOAH's own search, which read
test accuracy, not by peftbench's val200 protocol; only the retraining is ours.
Recipe: the AdamW recipe of `bench/recipes.py` (NOAH's retraining: AdamW 1e-3, wd 1e-4, batch 64,
100 epochs).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch
from torch import nn

from bench.errors import UserError
from bench.method import Setting, register_method
from bench.methods.adapter import Bottleneck
from bench.methods.lora import QKVDelta
from bench.methods.vpt import _PromptHook  # calls model.with_prompts(tokens, block)
from bench.model import PeftModel, check_cls_vit, freeze, make_head
from bench.recipes import ADAMW, ADAMW_GRID
from bench.targets import OutputHook, block_modules, fused_qkv


@lru_cache(maxsize=1)
def published_subnets() -> dict:
    with (resources.files("bench") / "reference" / "noah_subnets_vtab1k.json").open() as f:
        return json.load(f)


def layer_sizes(hp: dict, depth: int) -> tuple[list[int], list[int], list[int]]:
    """(prompts, ranks, widths) per block for this depth."""
    if hp["subnet"] == "uniform":
        return [hp["uniform"]] * depth, [hp["uniform"]] * depth, [hp["uniform"]] * depth
    subnet = published_subnets()["subnets"][hp["subnet"]]
    if depth != len(subnet["prompt"]):
        raise UserError(f"noah: the subnet NOAH searched for {hp['subnet']!r} has {len(subnet['prompt'])} layers "
                        f"(ViT-B/16); this backbone has {depth} blocks. Use subnet=uniform, or a 12-block ViT")
    return list(subnet["prompt"]), list(subnet["lora"]), list(subnet["adapter"])


class NOAHModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        check_cls_vit(backbone, "noah")
        qkvs = fused_qkv(backbone, "noah")
        mlps = block_modules(backbone, "mlp", "noah", nn.Module)
        prompts, ranks, widths = layer_sizes(hp, len(qkvs))
        freeze(backbone)
        # the backbone stays in train mode while training: its drop-path is part of the recipe
        super().__init__(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
        dim = backbone.embed_dim
        self.sizes = {"prompt": prompts, "lora": ranks, "adapter": widths}
        self.prompts = nn.ParameterList()
        for p in prompts:
            tensor = torch.empty(p, dim)
            if p:
                nn.init.xavier_uniform_(tensor)
            self.prompts.append(nn.Parameter(tensor))
        self.prompt_dropout = nn.Dropout(hp["prompt_dropout"])
        self.loras = nn.ModuleList(QKVDelta(dim, r, "qkv", 1.0, hp["dropout"]) if r else nn.Identity()
                                   for r in ranks)
        self.adapters = nn.ModuleList(Bottleneck(dim, d, hp["dropout"]) if d else nn.Identity() for d in widths)
        for i, (block, qkv, mlp) in enumerate(zip(backbone.blocks, qkvs, mlps)):
            block.register_forward_pre_hook(_PromptHook(self, i))
            if ranks[i]:
                qkv.register_forward_hook(OutputHook(self.loras[i]))
            if widths[i]:
                mlp.register_forward_hook(OutputHook(self.adapters[i]))
        self._tokens = 0  # the sequence length before any prompt: set at block 0

    def with_prompts(self, x: torch.Tensor, block: int) -> torch.Tensor:
        if block == 0:
            self._tokens = x.shape[1]
        prompts = self.prompt_dropout(self.prompts[block]).to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :self._tokens], prompts], dim=1)


def trainable_params(backbone, num_classes, hp) -> int:
    d = backbone.embed_dim
    prompts, ranks, widths = layer_sizes(hp, len(backbone.blocks))
    return (d * sum(prompts) + 4 * d * sum(ranks) + sum(2 * d * w + w + d for w in widths if w)
            + backbone.num_features * num_classes + num_classes)


TASKS = tuple(published_subnets()["subnets"])


@register_method(
    "noah",
    defaults=ADAMW,
    settings={"subnet": Setting("uniform", "the VTAB-1k task whose NOAH-searched subnet to retrain (the vtab1k "
                                            "suite sets it per task), or uniform", choices=("uniform", *TASKS)),
              "uniform": Setting(5, "with subnet=uniform: prompts, LoRA rank and adapter width of every layer",
                                 min=0),
              "prompt_dropout": Setting(0.1, "dropout on the prompts", min=0.0, below=1.0),
              "dropout": Setting(0.1, "dropout inside LoRA and the adapters", min=0.0, below=1.0)},
    summary="NOAH's searched subnet per VTAB-1k task (per-layer prompts, LoRA rank, adapter width), retrained; "
            "the architecture is NOAH's search, not our val200 protocol",
    paper="Zhang et al., Neural Prompt Search (NOAH), 2022: its committed subnets, retrained",
    formula=trainable_params,
    grid=ADAMW_GRID,
    identity_at_init=False,
    report_note="retrains the per-task architecture (prompts, LoRA ranks, adapter widths per layer) that NOAH's "
                "own search chose, reading test accuracy; only the retraining follows this report's protocol",
)
def build(backbone, num_classes, hparams):
    """NOAH's subnet: per-layer prompts, LoRA and adapters of the sizes NOAH's search chose."""
    return NOAHModel(backbone, num_classes, hparams)
