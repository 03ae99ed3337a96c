"""StableRep / SimCLR augmentations as the official code (``main_stablerep.py``), from
torchvision.transforms.v2, scaled to the image size: optional random down-sample of the stored image
(before the crop, to 1/4 or 1/2 of its side and back: the official 64 or 128 px of 256),
RandomResizedCrop(size, scale), colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2,
Gaussian blur p 0.5 (kernel ~10% of the side, as 23 px is at 224), horizontal flip, ImageNet
mean / std normalisation.
"""

from __future__ import annotations


import torch
from omegaconf import DictConfig
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

# ImageNet statistics, as the official training and linear-probe transforms
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class RandomDownsample(torch.nn.Module):
    """With probability p, resize the image to a fraction of its side and back (the official
    ``DownSampleAndUpsample``, applied to the stored image before the crop; fractions drawn uniformly)."""

    def __init__(self, p: float, fractions: tuple[float, ...] = (0.25, 0.5)):
        super().__init__()
        self.p, self.fractions = p, tuple(fractions)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or torch.rand(()) >= self.p:
            return img
        h, w = img.shape[-2:]
        fraction = self.fractions[int(torch.randint(len(self.fractions), ()))]
        small = [max(2, round(h * fraction)), max(2, round(w * fraction))]
        return TF.resize(TF.resize(img, small, antialias=True), [h, w], antialias=True)


def blur_kernel(size: int) -> int:
    k = max(3, int(round(size * 0.1)))
    return k if k % 2 else k + 1


def blur_sigma(size: int) -> tuple[float, float]:
    """The paper's sigma range (0.1, 2.0) at 224 px, scaled to the side (at least 0.1 to 0.3 px)."""
    return 0.1, max(0.3, 2.0 * size / 224)


def train_transform(cfg: DictConfig) -> v2.Compose:
    """Per-image training augmentation, in the official order: uint8 CHW tensor in, normalised float CHW out."""
    a, size = cfg.train.augment, cfg.train.image_size
    return v2.Compose([
        RandomDownsample(a.downsample_p, tuple(a.downsample_sizes)),
        v2.RandomResizedCrop(size, scale=tuple(a.crop_scale), antialias=True),
        v2.RandomApply([v2.ColorJitter(*a.color_jitter)], p=a.color_jitter_p),
        v2.RandomGrayscale(p=a.grayscale_p),
        v2.RandomApply([v2.GaussianBlur(blur_kernel(size), sigma=blur_sigma(size))], p=a.blur_p),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])
