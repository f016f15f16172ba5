"""Backbones: timm models by name, local checkpoint files, and the embedded demo ViT.

Everything goes through timm's own machinery (`create_model`, pretrained configs, checkpoint
filters), so a name that works in timm works here, and a checkpoint loads the way timm loads it.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from .errors import UserError

DEMO_WEIGHTS = "peftbench_demo_vit_fmnist.safetensors"
# The demo ViT: small enough to fine-tune on 2 CPU cores in seconds, a real ViT nonetheless.
DEMO_ARCH = dict(img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0)
CHECKPOINT_SUFFIXES = (".npz", ".pth", ".pt", ".bin", ".safetensors")


def demo_weights_path() -> Path:
    return Path(str(resources.files("bench") / "weights" / DEMO_WEIGHTS))


# timm looks for `default_cfgs` in the module that registers a model, so it must exist first.
default_cfgs = generate_default_cfgs({
    "peftbench_demo_vit.fmnist": {
        "file": str(demo_weights_path()),
        "num_classes": 0,
        "input_size": (3, 32, 32),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "license": "apache-2.0",
        "description": "4-block ViT pretrained on Fashion-MNIST by bench/pretrain_demo.py",
    },
})


@register_model
def peftbench_demo_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The demo suite's backbone (see `bench/pretrain_demo.py` for how its weights were made)."""
    args = dict(DEMO_ARCH)
    args.update(kwargs)
    return build_model_with_cfg(
        VisionTransformer, "peftbench_demo_vit", pretrained,
        pretrained_filter_fn=checkpoint_filter_fn, **args)


@dataclass
class Backbone:
    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    checkpoint: str | None

    @property
    def embed_dim(self) -> int:
        return int(self.model.num_features)


def _known_model(name: str) -> bool:
    arch = name.split(".")[0]
    return timm.is_model(arch)


def _hub_hint(name: str) -> str:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - only building a hint
        cfg = None
    parts = []
    if cfg is not None and cfg.hf_hub_id:
        fname = cfg.hf_hub_filename or "model.safetensors"
        parts.append(f"download {fname} from the Hugging Face repo {cfg.hf_hub_id} while online "
                     "(it is then cached for offline use)")
    if cfg is not None and cfg.url:
        parts.append(f"download {cfg.url}")
    if name.startswith("vit_base_patch16_224") and "in21k" in name:
        parts.append("or download Google's ImageNet-21k ViT-B_16.npz "
                     "(storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz)")
    hint = "; ".join(parts) or "download the model's weights"
    return f"{hint}, then pass the file with --checkpoint PATH"


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local .npz (Google's release format), .pth/.pt/.bin or .safetensors into `model`.

    The classification head of the checkpoint is dropped: every method brings its own head.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}. Pass an existing .npz, .pth or "
                        ".safetensors file with --checkpoint.")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise UserError(f"checkpoint {path}: unknown file type {path.suffix!r}; expected one of "
                        f"{', '.join(CHECKPOINT_SUFFIXES)}")
    try:
        if path.suffix.lower() == ".npz":
            if not hasattr(model, "load_pretrained"):
                raise UserError(f"checkpoint {path}: {type(model).__name__} cannot read .npz files; "
                                "convert it to .pth or .safetensors")
            model.load_pretrained(str(path))
            return
        own_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)

        def keep_backbone(state_dict, model_):
            if own_filter is not None:
                state_dict = own_filter(state_dict, model_)
            return {k: v for k, v in state_dict.items() if not k.startswith(("head.", "fc_norm.head"))}

        incompatible = timm.models.load_checkpoint(model, str(path), strict=False,
                                                   filter_fn=keep_backbone)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: say which and why
        raise UserError(f"checkpoint {path} could not be loaded into {type(model).__name__}: "
                        f"{str(exc).splitlines()[0][:300]}") from None
    missing = [k for k in incompatible.missing_keys if not k.startswith("head.")]
    if missing or incompatible.unexpected_keys:
        raise UserError(
            f"checkpoint {path} does not match the backbone: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys "
            f"{incompatible.unexpected_keys[:5]}. Is it a checkpoint of this architecture?")


def _create(name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    """timm.create_model; a model without a fixed input size (a ResNet, a ConvNeXt) takes no
    `img_size` and any image, so it is built without one."""
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc) or "img_size" not in kwargs:
            raise
        return timm.create_model(name, pretrained=pretrained, **{k: v for k, v in kwargs.items() if k != "img_size"})


def create_backbone(name: str, checkpoint: str | None = None, img_size: int | None = None,
                    drop_path: float = 0.0) -> Backbone:
    """A timm model without a head (num_classes=0), with pretrained weights from the hub cache,
    a package file (the demo ViT) or `checkpoint`."""
    if not _known_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5)
        raise UserError(f"unknown backbone {name!r}: not a timm model name"
                        + (f" (did you mean {', '.join(close)}?)" if close else "")
                        + ". See `timm.list_models()`.")
    kwargs = {"num_classes": 0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if checkpoint:
        model = _create(name, False, kwargs)
        load_checkpoint_into(model, checkpoint)
    else:
        try:
            model = _create(name, True, kwargs)
        except (OSError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"no pretrained weights for backbone {name!r} on this machine "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). To fix: "
                f"{_hub_hint(name)}.") from None
    model.eval()
    cfg = timm.data.resolve_model_data_config(model)
    return Backbone(model=model, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), name=name,
                    checkpoint=str(Path(checkpoint).expanduser().resolve()) if checkpoint else None)


def set_threads(n: int | None = None) -> int:
    """Use the cores this process may run on, not the machine's count (containers, SLURM)."""
    if n is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:
            n = os.cpu_count() or 1
    torch.set_num_threads(max(1, n))
    return n


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, computed once per process for a given path, size and modification time
    (a ViT-B checkpoint is 330 MB: each run of a campaign must not hash it again)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def weights_file(name: str, checkpoint: str | None) -> tuple[str, Path | None]:
    """Where the backbone's weights were read from: (source, file). The source is `checkpoint`
    (--checkpoint), `package` (a file named by the pretrained config, as the demo ViT's), `hf-hub`
    or `url` (timm's download caches, looked up in that order as timm does); the file is None
    where none can be found (weights never downloaded, or a source timm reads some other way)."""
    if checkpoint:
        return "checkpoint", Path(checkpoint).expanduser().resolve()
    try:
        cfg = timm.models.get_pretrained_cfg(name)  # a name without a tag: the architecture's default
    except Exception:  # noqa: BLE001 - an identity for the record, never a reason to fail a run
        cfg = None
    if cfg is None:
        return "unknown", None
    if cfg.file:
        return "package", Path(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for fname in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(repo, fname)
            if isinstance(found, str):
                return "hf-hub", Path(found)
        return "hf-hub", None
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url.split("?")[0])
        return "url", cached if cached.is_file() else None
    return "unknown", None


def weights_identity(name: str, checkpoint: str | None) -> dict:
    """What a record stores about the backbone's weights: the backbone name, where the weights
    came from, the file and its SHA-256 (None where no file could be found: the report then says
    the weights are unhashed)."""
    source, path = weights_file(name, checkpoint)
    sha = None
    if path is not None and path.is_file():
        try:
            sha = file_sha256(path)
        except OSError:
            sha = None
    return {"backbone": name, "source": source, "file": str(path) if path is not None else None, "sha256": sha}
