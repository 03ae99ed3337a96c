"""The per-image training augmentation (workers: crop + flip on PIL; device: colour, grayscale,
blur, normalisation) against torchvision's own ops on the same draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import functional as F1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from synrep.learning import augment


def photo(size=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(small.repeat(8, 0).repeat(8, 1) + rng.integers(0, 24, (size, size, 3), dtype=np.uint8))


def test_worker_geometry_is_torchvisions_resized_crop_and_flip():
    img, aug = photo(), augment.ImageAugment(32)
    for seed in range(20):
        p = aug.params(random.Random(seed), *img.size)
        top, left, h, w = p["box"]
        expected = F1.resized_crop(img, top, left, h, w, [32, 32], interpolation=F1.InterpolationMode.BILINEAR)
        expected = F1.hflip(expected) if p["flip"] else expected
        assert np.array_equal(np.asarray(aug.geometry(img, p)), np.asarray(expected))


def test_pil_colour_is_the_official_ops_in_the_drawn_order():
    img, aug = photo(32), augment.ImageAugment(32)
    ops = (F1.adjust_brightness, F1.adjust_contrast, F1.adjust_saturation, F1.adjust_hue)
    for seed in range(20):
        p = aug.params(random.Random(seed), *img.size)
        expected = img
        for op, factor in p["jitter"] or ():
            expected = ops[op](expected, factor)
        if p["gray"]:
            expected = F1.rgb_to_grayscale(expected, 3)
        if p["blur"] is not None:
            expected = expected.filter(ImageFilter.GaussianBlur(radius=p["blur"]))
        assert np.array_equal(np.asarray(aug.colour(img, p)), np.asarray(expected))


def test_device_colour_and_blur_are_torchvisions_tensor_ops():
    size = 32
    aug, dev = augment.ImageAugment(size), augment.DeviceAugment(size)
    crops, draws, params = [], [], []
    for seed in range(24):
        crop, packed = aug(photo(48, seed), random.Random(seed))
        crops.append(crop)
        draws.append(packed)
        params.append(aug.params(random.Random(seed), 48, 48))  # the same draws again
    out = dev(torch.stack(crops), torch.stack(draws))
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    normalize = v2.Normalize(augment.MEAN, augment.STD)
    for crop, p, got in zip(crops, params, out):
        x = crop.float() / 255
        for op, factor in p["jitter"] or ():
            x = ops[op](x, factor)
        if p["gray"]:
            x = F.rgb_to_grayscale(x, 3)
        if p["blur"] is not None:
            x = F.gaussian_blur(x, [augment.blur_kernel(size)] * 2, [p["blur"]] * 2)
        torch.testing.assert_close(got, normalize(x), atol=2e-5, rtol=0)
    # every branch was taken by some crop
    assert {bool(p["jitter"]) for p in params} == {True, False} and {p["gray"] for p in params} == {True, False}
    assert {p["blur"] is None for p in params} == {True, False}


def test_draws_follow_the_recipe_probabilities_and_torchvisions_crop_boxes():
    aug = augment.ImageAugment(224)
    n = 20000
    ps = [aug.params(random.Random(i), 256, 192) for i in range(n)]
    # binomial frequencies within 4.5 standard deviations
    for name, p, hit in (("jitter", 0.8, lambda q: q["jitter"] is not None), ("gray", 0.2, lambda q: q["gray"]),
                         ("blur", 0.5, lambda q: q["blur"] is not None), ("flip", 0.5, lambda q: q["flip"])):
        rate = np.mean([hit(q) for q in ps])
        assert abs(rate - p) < 4.5 * np.sqrt(p * (1 - p) / n), name
    sigmas = np.array([q["blur"] for q in ps if q["blur"] is not None])
    assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
    # crop boxes: area and aspect quantiles as torchvision's RandomResizedCrop.get_params draws them
    torch.manual_seed(0)
    img = torch.zeros(3, 192, 256)
    ref = np.array([_tv_box(img) for _ in range(n)])
    ours = np.array([q["box"] for q in ps])
    for stat in (lambda b: b[:, 2] * b[:, 3] / (192 * 256), lambda b: np.log(b[:, 3] / b[:, 2]),
                 lambda b: b[:, 0] / 192, lambda b: b[:, 1] / 256):
        qa, qb = np.quantile(stat(ours), [0.1, 0.5, 0.9]), np.quantile(stat(ref), [0.1, 0.5, 0.9])
        assert np.abs(qa - qb).max() < 0.03


def _tv_box(img):
    from torchvision.transforms import RandomResizedCrop

    return RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])


def test_a_crop_depends_on_its_draws_alone():
    aug, img = augment.ImageAugment(32), photo()
    a, b = aug(img, random.Random("0-1-7")), aug(img, random.Random("0-1-7"))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert aug(img, random.Random("0-2-7"))[1].tolist() != a[1].tolist()


@pytest.mark.parametrize("on_device", [True, False])
def test_train_transform_ships_uint8(on_device):
    from synrep.config import load_config

    cfg = load_config(["train.image_size=24", "train.augment.color_jitter_p=0.8"])
    out = augment.train_transform(cfg, on_device=on_device)(photo(), random.Random(0))
    crop = out[0] if on_device else out
    assert crop.dtype == torch.uint8 and crop.shape == (3, 24, 24)
