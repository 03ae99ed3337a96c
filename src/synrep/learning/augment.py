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


class BatchAugment(torch.nn.Module):
    """The same augmentation as ``train_transform`` when it is down-sampling, crops and flips only
    (the toy default: colour is a caption attribute there), applied to a whole batch of uint8
    images at once: per-image draws as ``train_transform`` makes them (down-sample with p, a
    RandomResizedCrop box, a flip), the crops cut and resized (bilinear) in one ``roi_align``.
    A toy step's 64 crops cost about 0.7 ms each through the per-image transforms, mostly call
    overhead; here a few ms the batch. ``None`` from ``batch_augment`` when colour jitter,
    grayscale or blur is on (they stay per image)."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        a = cfg.train.augment
        self.size, self.scale = cfg.train.image_size, tuple(a.crop_scale)
        self.downsample = RandomDownsample(a.downsample_p, tuple(a.downsample_sizes))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import roi_align

        x = images.float()
        n, _, h, w = x.shape
        p = self.downsample.p
        if p > 0:
            chosen = torch.rand(n) < p
            fractions = torch.randint(len(self.downsample.fractions), (n,))
            for k, fraction in enumerate(self.downsample.fractions):
                idx = torch.nonzero(chosen & (fractions == k)).flatten()
                if len(idx):
                    small = [max(2, round(h * fraction)), max(2, round(w * fraction))]
                    x[idx] = TF.resize(TF.resize(x[idx], small, antialias=True), [h, w], antialias=True)
        boxes = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], crop_boxes(n, h, w, self.scale)], 1)
        crops = roi_align(x, boxes.to(x.device), output_size=self.size, spatial_scale=1.0, sampling_ratio=0,
                          aligned=True)
        flip = (torch.rand(n) < 0.5).to(x.device)
        crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
        return ((crops - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def crop_boxes(n: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3),
               tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop's boxes for n images at once, [n, 4] as (x1, y1, x2, y2): torchvision's
    ``get_params`` (area uniform in ``scale``, log-uniform aspect ratio, up to 10 tries, else the
    centre crop of the clamped ratio), vectorised over images and tries."""
    area = h * w
    target = area * torch.empty(n, tries).uniform_(*scale)
    log_ratio = torch.log(torch.tensor(ratio))
    aspect = torch.exp(torch.empty(n, tries).uniform_(float(log_ratio[0]), float(log_ratio[1])))
    cw = torch.sqrt(target * aspect).round()
    ch = torch.sqrt(target / aspect).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    found = first >= 0
    pick = first.clamp(min=0)[:, None]
    cw, ch = cw.gather(1, pick).squeeze(1), ch.gather(1, pick).squeeze(1)
    # fallback: the whole image cut to the nearest allowed ratio, centred (torchvision's)
    in_ratio = w / h
    if in_ratio < min(ratio):
        fw, fh = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = h, round(h * max(ratio))
    else:
        fw, fh = w, h
    cw, ch = torch.where(found, cw, float(fw)), torch.where(found, ch, float(fh))
    top = torch.where(found, (torch.rand(n) * (h - ch + 1)).floor(), ((h - ch) / 2).round())
    left = torch.where(found, (torch.rand(n) * (w - cw + 1)).floor(), ((w - cw) / 2).round())
    return torch.stack([left, top, left + cw, top + ch], 1)


def augments_batches(cfg: DictConfig) -> bool:
    """Whether the config's augmentation is down-sampling, crops and flips only (see ``BatchAugment``)."""
    a = cfg.train.augment
    return not (a.color_jitter_p > 0 or a.grayscale_p > 0 or a.blur_p > 0)


def batch_augment(cfg: DictConfig) -> BatchAugment | None:
    """The batched augmentation when the config's augmentation allows it, else None."""
    return BatchAugment(cfg) if augments_batches(cfg) else None
