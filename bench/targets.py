"""Where a method attaches to a ViT, kept apart from what it attaches (as HF PEFT separates
target choice from injection): find a module at the same path in every block, refusing clearly
what is not there, and attach a forward hook or pre-hook to it.

Methods that "wrap module X of every block" (LoRA, adapters, SSF, AdaptFormer, ...) call
`block_modules` and hold only their own layer.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .errors import UserError


def blocks_of(backbone: nn.Module, method: str, needs: str) -> nn.Module:
    """The backbone's transformer blocks (`backbone.blocks`, as a timm VisionTransformer has)."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        raise UserError(f"{method} needs a ViT whose blocks have {needs} (a timm VisionTransformer); "
                        f"{type(backbone).__name__} has no `blocks`")
    return blocks


def block_modules(backbone: nn.Module, path: str, method: str, kind: type | tuple = nn.Linear) -> list[nn.Module]:
    """`blocks.<i>.<path>` of every block, each an instance of `kind`; else one error naming the
    block and the module (a fused or a non-Linear projection included)."""
    out = []
    for i, block in enumerate(blocks_of(backbone, method, path)):
        try:
            module = block.get_submodule(path)
        except AttributeError:
            near = ", ".join(n for n, _ in block.named_modules() if n and n.count(".") <= path.count("."))
            raise UserError(f"{method} attaches to blocks.N.{path}, and blocks.{i} of this "
                            f"{type(backbone).__name__} has none (it has: {near})") from None
        if not isinstance(module, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise UserError(f"{method} attaches to blocks.N.{path} as an {want}; blocks.{i}.{path} of this "
                            f"{type(backbone).__name__} is a {type(module).__name__}")
        out.append(module)
    return out


def fused_qkv(backbone: nn.Module, method: str) -> list[nn.Linear]:
    """Every block's fused `attn.qkv`, Linear(D, 3D): q, k and v are its row blocks."""
    modules = block_modules(backbone, "attn.qkv", method)
    for i, m in enumerate(modules):
        if m.out_features != 3 * m.in_features:
            raise UserError(f"{method} needs blocks.N.attn.qkv to be Linear(D, 3D) (q, k and v fused); "
                            f"blocks.{i}.attn.qkv is Linear({m.in_features}, {m.out_features})")
    return modules


class OutputHook:
    """A forward hook that replaces a module's output by `fn(input, output)` (a plain object
    holding the method's layer, so the layer is not registered twice as a submodule)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, module, args, output):
        return self.fn(args[0], output)


class InputHook:
    """A forward pre-hook that replaces a module's first input by `fn(input)`."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, module, args):
        return (self.fn(args[0]), *args[1:])


def remove_hooks(module: nn.Module) -> None:
    """Drop every forward hook and pre-hook of `module` and its children that peftbench attached
    (for merged models: what the hooks did is now in the weights)."""
    for m in module.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for key in [k for k, h in hooks.items() if isinstance(h, (OutputHook, InputHook))]:
                del hooks[key]
