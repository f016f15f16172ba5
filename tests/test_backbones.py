"""Backbones through timm: the committed demo weights, local checkpoints, clear offline errors."""

import timm
import torch
from safetensors.torch import load_file, save_file

import pytest

from bench.backbones import create_backbone, demo_weights_path
from bench.errors import UserError


def random_vit(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("peftbench_demo_vit", pretrained=False, num_classes=0)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_demo_backbone_loads_the_committed_weights_without_network():
    bb = create_backbone("peftbench_demo_vit.fmnist")
    committed = load_file(str(demo_weights_path()))
    state = bb.model.state_dict()
    assert set(committed) == set(state)
    assert all(torch.equal(committed[k], state[k]) for k in committed)
    assert bb.mean == (0.5, 0.5, 0.5) and bb.embed_dim == 96
    assert not bb.model.training


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoints_load_exactly_and_drop_the_classifier_head(tmp_path, suffix):
    source = timm.create_model("peftbench_demo_vit", pretrained=False, num_classes=7)  # has a head
    torch.manual_seed(1)
    for p in source.parameters():
        p.data.normal_()
    path = tmp_path / f"ckpt{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".pth":
        # as training scripts save them: wrapped, with DataParallel's prefix
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        save_file(state, str(path))
    bb = create_backbone("peftbench_demo_vit", checkpoint=str(path))
    expected = {k: v for k, v in state.items() if not k.startswith("head.")}
    got = bb.model.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert bb.checkpoint == str(path.resolve())


def test_a_checkpoint_of_another_architecture_is_refused_with_the_file_named(tmp_path):
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                              depth=2)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(UserError, match=f"checkpoint {path}"):
        create_backbone("peftbench_demo_vit", checkpoint=str(path))


def test_checkpoint_file_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint file not found"):
        create_backbone("peftbench_demo_vit", checkpoint=str(tmp_path / "missing.pth"))
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"x")
    with pytest.raises(UserError, match="unknown file type '.h5'"):
        create_backbone("peftbench_demo_vit", checkpoint=str(odd))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"definitely not safetensors")
    with pytest.raises(UserError, match="could not be loaded"):
        create_backbone("peftbench_demo_vit", checkpoint=str(corrupt))


def test_without_weights_or_network_the_error_names_the_file_to_fetch_and_the_flag():
    with pytest.raises(UserError) as info:
        create_backbone("vit_base_patch16_224.orig_in21k")
    msg = str(info.value)
    assert "timm/vit_base_patch16_224.orig_in21k" in msg and "ViT-B_16.npz" in msg
    assert "--checkpoint" in msg


def test_an_unknown_model_name_suggests_close_ones():
    with pytest.raises(UserError, match="unknown backbone 'vit_base_patch16_244'.*did you mean"):
        create_backbone("vit_base_patch16_244")


def test_the_real_size_vit_b16_is_built_without_weights_with_the_papers_parameter_count():
    model = timm.create_model("vit_base_patch16_224.orig_in21k", pretrained=False, num_classes=0)
    assert sum(p.numel() for p in model.parameters()) == 85_798_656


def test_the_weights_identity_names_the_file_read_and_its_hash(tmp_path, monkeypatch):
    import hashlib

    from bench import backbones

    path = tmp_path / "vit.safetensors"
    save_file(random_vit().state_dict(), str(path))
    ident = backbones.weights_identity("vit_tiny_patch16_224", str(path))
    assert ident["source"] == "checkpoint" and ident["file"] == str(path.resolve())
    assert ident["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # hashed once per file version: a changed file is hashed again
    path.write_bytes(b"other")
    assert backbones.weights_identity("vit_tiny_patch16_224", str(path))["sha256"] == \
        hashlib.sha256(b"other").hexdigest()
    # a hub model never downloaded (the tests are offline, with an empty cache): no file, no hash
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = backbones.weights_identity("vit_base_patch16_224.augreg2_in21k_ft_in1k", None)
    assert hub == {"backbone": "vit_base_patch16_224.augreg2_in21k_ft_in1k", "source": "hf-hub", "file": None,
                   "sha256": None}
    # and one that is in the cache is found where timm reads it
    snap = tmp_path / "hub" / "models--timm--vit_base_patch16_224.augreg2_in21k_ft_in1k"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc")
    (snap / "snapshots" / "abc").mkdir(parents=True)
    (snap / "snapshots" / "abc" / "model.safetensors").write_bytes(b"weights")
    found = backbones.weights_identity("vit_base_patch16_224.augreg2_in21k_ft_in1k", None)
    assert found["sha256"] == hashlib.sha256(b"weights").hexdigest() and found["source"] == "hf-hub"
