"""Speed work that must not change results: decoded splits, batch loaders, cached features,
precision and compile options. (Speed itself is measured by benchmarks/run.py, not asserted.)"""

import pytest
import torch
from torch.utils.data import DataLoader

from bench import data
from bench.data import (DecodedDataset, ImageDataset, batch_loader, build_transforms, decode_split,
                        read_split)
from bench.errors import UserError
from bench.suite import load_suite
from helpers import write_fgvc_task

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(autouse=True)
def _fresh_decoded():
    data.clear_decoded()
    yield
    data.clear_decoded()


def toy_split(toy_suite, split="train800"):
    suite_path, root = toy_suite
    suite = load_suite(str(suite_path))
    return suite, read_split(suite, suite.task("colours"), root, split)


def test_a_decoded_split_gives_bit_identical_batches_to_the_image_by_image_dataset(toy_suite):
    suite, split = toy_split(toy_suite)
    transforms = build_transforms(suite, MEAN, STD, train=True)
    decoded = decode_split(split, transforms[0])
    assert decoded.pixels.dtype == torch.uint8 and decoded.pixels.shape == (40, 3, 32, 32)
    batch = DecodedDataset(decoded, transforms[1])[[3, 0, 7]]
    per_image = ImageDataset(split.items, transforms)
    assert torch.equal(batch[0], torch.stack([per_image[i][0] for i in (3, 0, 7)]))
    assert batch[1].tolist() == [per_image[i][1] for i in (3, 0, 7)]


def test_a_split_is_decoded_once_per_process_and_again_when_an_image_changes(toy_suite, monkeypatch):
    suite, split = toy_split(toy_suite)
    decode = build_transforms(suite, MEAN, STD, train=True)[0]
    opened = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda p: opened.append(p) or real(p))
    first = decode_split(split, decode)
    assert first.source == "decoded" and len(opened) == 40
    again = decode_split(split, decode)
    assert again.source == "memory" and len(opened) == 40 and again.pixels is first.pixels
    path = split.items[5][0]
    from PIL import Image
    Image.new("RGB", (24, 24), (0, 0, 0)).save(path)
    changed = decode_split(split, decode)
    assert changed.source == "decoded" and changed.pixels[5].sum() == 0


def test_the_disk_cache_is_written_beside_the_split_and_read_back_in_a_new_process(toy_suite, monkeypatch):
    suite, split = toy_split(toy_suite)
    decode = build_transforms(suite, MEAN, STD, train=True)[0]
    first = decode_split(split, decode, cache="disk")
    stored = list((split.items[0][0].parents[2] / ".peftbench-decoded").glob("train800-*.pt"))
    assert len(stored) == 1
    data.clear_decoded()  # as a new process would start
    monkeypatch.setattr(data, "load_image", lambda p: pytest.fail(f"decoded {p} again"))
    again = decode_split(split, decode, cache="disk")
    assert again.source == "disk" and torch.equal(again.pixels, first.pixels)
    with pytest.raises(UserError, match="decode cache 'nope'"):
        decode_split(split, decode, cache="nope")


def test_a_split_over_the_memory_budget_is_streamed(toy_suite):
    suite, split = toy_split(toy_suite)
    decode = build_transforms(suite, MEAN, STD, train=True)[0]
    assert decode_split(split, decode, budget=10 * 3 * 32 * 32) is None


def test_images_of_different_shapes_and_random_augmentation_go_image_by_image(tmp_path):
    suite = load_suite("fgvc")
    write_fgvc_task(tmp_path, "CUB_200_2011", "images", [1, 2], {"train": 4, "val": 2, "test": 2})
    split = read_split(suite, suite.task("cub"), tmp_path, "train")
    transforms = build_transforms(suite, MEAN, STD, train=True)
    ds = DecodedDataset(decode_split(split, transforms[0]), transforms[1], per_image=True)
    x, y = ds[[0, 1, 2]]
    assert ds.per_image and x.shape == (3, 3, 224, 224) and y.tolist() == [split.items[i][1] for i in range(3)]


def test_the_batch_loader_shuffles_exactly_as_dataloader_with_the_same_generator():
    dataset = list(range(53))
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    reference = DataLoader(dataset, batch_size=10, shuffle=True, generator=gen_a)

    class Indices(torch.utils.data.Dataset):
        def __len__(self):
            return 53

        def __getitem__(self, index):
            return torch.tensor(index)

    ours = batch_loader(Indices(), 10, shuffle=True, gen=gen_b)
    assert len(ours) == len(reference) == 6
    for _ in range(3):  # epochs: the generator advances the same way
        assert [b.tolist() for b in ours] == [b.tolist() for b in reference]
    assert torch.equal(gen_a.get_state(), gen_b.get_state())
