"""StableRep / SimCLR augmentations as the official code (``main_stablerep.py``), scaled to the
image size: optional random down-sample of the stored image (before the crop, to 1/4 or 1/2 of its
side and back: the official 64 or 128 px of 256), RandomResizedCrop(size, scale), colour jitter
(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, Gaussian blur p 0.5 (sigma 0.1 to 2.0 at 224 px),
horizontal flip, ImageNet mean / std normalisation.

Two implementations of one augmentation: ``ImageAugment`` per image on PIL images in the loader
workers (the official ops on the official types, uint8 out; normalised on the device), and
``BatchAugment`` a batch at a time on the device when the augmentation is crops and flips only (the
toy default). ``ImageAugment`` leaves colour jitter, grayscale and blur to ``DeviceAugment`` (the
GPU) in training. ``reference_transform`` is the torchvision.transforms.v2 form, kept as a reference.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
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


def reference_transform(cfg: DictConfig) -> v2.Compose:
    """The augmentation as torchvision.transforms.v2 ops on uint8 tensors, normalised float out:
    ~28 ms an image at 224 px on a CPU core (benchmarks/loader.py times ``ImageAugment``)."""
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


def train_transform(cfg: DictConfig, on_device: bool = True) -> "ImageAugment":
    """Per-image training augmentation, in the official order: an image in (PIL, or a uint8 CHW
    tensor), a uint8 CHW crop out, with its draws for ``DeviceAugment`` when ``on_device``."""
    a = cfg.train.augment
    return ImageAugment(cfg.train.image_size, tuple(a.crop_scale), tuple(a.color_jitter), a.color_jitter_p,
                        a.grayscale_p, a.blur_p, a.downsample_p, tuple(a.downsample_sizes), on_device=on_device)


def crop_params(draw: random.Random, width: int, height: int, scale: tuple[float, float],
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, height, width): torchvision's ``get_params`` (area
    uniform in ``scale``, log-uniform aspect ratio, 10 tries, else the centre crop of the clamped
    ratio), drawn from ``draw``."""
    import math

    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * draw.uniform(*scale)
        aspect = math.exp(draw.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return draw.randint(0, height - h), draw.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ImageAugment:
    """The official per-image augmentation, with every random draw from the sample's
    ``random.Random`` (a crop depends on (seed, pass, sample) alone, whatever worker makes it) and
    a uint8 CHW tensor out (normalised on the device, ``Normalize``), the crop cut and resized
    first so that everything after it works on the small crop.

    ``on_device`` (the trainer's): the worker down-samples, crops and flips (PIL), and ships each
    crop's colour, grayscale and blur draws beside it (``PARAMS`` floats); ``DeviceAugment`` applies
    them to the batch on the device. Colour, grayscale and a symmetric blur commute with the flip,
    so the order is the official one. The colour ops and the blur are most of the official
    transform's CPU time (hue alone is PIL's RGB -> HSV -> RGB); on the GPU they are a few
    batched kernels. Otherwise every op runs here on the PIL image (the official ops: torchvision's
    PIL functions, PIL's GaussianBlur as the official ``GaussianBlur``). benchmarks/loader.py times
    both against the official transform."""

    takes_draw = True  # GroupDataset passes PIL images and the sample's draws

    def __init__(self, size: int, crop_scale=(0.08, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_p=0.8,
                 grayscale_p=0.2, blur_p=0.5, downsample_p=0.0, downsample_sizes=(0.25, 0.5), on_device=True):
        self.size, self.crop_scale = size, tuple(crop_scale)
        b, c, s, h = color_jitter
        self.ranges = ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h))
        self.color_jitter_p, self.grayscale_p, self.blur_p = color_jitter_p, grayscale_p, blur_p
        self.downsample_p, self.downsample_sizes = downsample_p, tuple(downsample_sizes)
        self.sigma = blur_sigma(size)
        self.on_device = on_device

    def params(self, draw: random.Random, width: int, height: int) -> dict:
        """Every draw of one crop, in the official transforms' order."""
        p: dict = {"downsample": None, "jitter": None, "gray": False, "blur": None}
        if self.downsample_p > 0 and draw.random() < self.downsample_p:
            p["downsample"] = draw.choice(self.downsample_sizes)
        p["box"] = crop_params(draw, width, height, self.crop_scale)
        if draw.random() < self.color_jitter_p:
            order = draw.sample(range(4), 4)  # ColorJitter's random order of its four ops
            factors = [draw.uniform(*r) for r in self.ranges]
            p["jitter"] = [(op, factors[op]) for op in order]
        p["gray"] = draw.random() < self.grayscale_p
        if draw.random() < self.blur_p:
            p["blur"] = draw.uniform(*self.sigma)
        p["flip"] = draw.random() < 0.5
        return p

    def geometry(self, img: Image.Image, p: dict) -> Image.Image:
        """Down-sample, crop + resize (bilinear, as torchvision's PIL path) and flip."""
        if p["downsample"] is not None:
            w, h = img.size
            small = (max(2, round(w * p["downsample"])), max(2, round(h * p["downsample"])))
            img = img.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
        top, left, h, w = p["box"]
        img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
        return img.transpose(Image.FLIP_LEFT_RIGHT) if p["flip"] else img

    def colour(self, img: Image.Image, p: dict) -> Image.Image:
        """Colour jitter, grayscale and blur on the PIL crop, as the official transforms."""
        from PIL import ImageFilter
        from torchvision.transforms import functional as F

        adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for op, factor in p["jitter"] or ():
            img = adjust[op](img, factor)
        if p["gray"]:
            img = img.convert("L").convert("RGB")
        if p["blur"] is not None:
            img = img.filter(ImageFilter.GaussianBlur(radius=p["blur"]))
        return img

    @staticmethod
    def packed(p: dict) -> torch.Tensor:
        """A crop's device-side draws as ``PARAMS`` floats (see ``DeviceAugment``)."""
        row = torch.zeros(PARAMS)
        if p["jitter"] is not None:
            row[0] = 1
            for slot, (op, factor) in enumerate(p["jitter"]):
                row[1 + op] = factor
                row[5 + slot] = op
        row[9] = float(p["gray"])
        row[10] = p["blur"] or 0.0
        return row

    def __call__(self, img, draw: random.Random | None = None):
        """uint8 crop [3, S, S]; with ``on_device``, ``(crop, draws)``."""
        if isinstance(img, torch.Tensor):
            img = Image.fromarray(img.permute(1, 2, 0).numpy())
        draw = draw if draw is not None else random._inst
        p = self.params(draw, *img.size)
        img = self.geometry(img, p)
        if not self.on_device:
            img = self.colour(img, p)
        crop = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        return (crop, self.packed(p)) if self.on_device else crop


# the per-crop draws that ImageAugment ships beside a crop for DeviceAugment: jitter on, the
# brightness / contrast / saturation / hue factors, the order of the four ops, grayscale, blur sigma
PARAMS = 11


def _gray(x: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale weights, [N, 1, H, W]."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """torchvision's tensor RGB -> HSV (all in [0, 1]), batched."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """torchvision's tensor HSV -> RGB, batched."""
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    mask = i.unsqueeze(1) == torch.arange(6, device=i.device, dtype=torch.int32).view(1, -1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), 1)
    a2 = torch.stack((t, v, v, q, p, p), 1)
    a3 = torch.stack((p, p, t, v, v, q), 1)
    a4 = torch.stack((a1, a2, a3), 1)  # [N, 3, 6, H, W]
    return (a4 * mask.unsqueeze(1)).sum(2)


class DeviceAugment(torch.nn.Module):
    """The colour jitter (each crop's own factors and order), grayscale and Gaussian blur
    (kernel ~10% of the side, each crop's sigma; torchvision's reflect padding) that ImageAugment
    leaves to the device, then ImageNet normalisation: uint8 [N, 3, S, S] and draws [N, PARAMS]
    in, normalised float out. The ops are torchvision's tensor ops, batched over crops."""

    def __init__(self, size: int):
        super().__init__()
        self.kernel = blur_kernel(size)
        self.normalize = Normalize()

    def forward(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        draws = draws.to(x.device)
        jitter = draws[:, 0] > 0
        for slot in range(4):
            for op in range(4):
                idx = torch.nonzero(jitter & (draws[:, 5 + slot] == op)).flatten()
                if len(idx):
                    x[idx] = self._colour(x[idx], op, draws[idx, 1 + op])
        gray = torch.nonzero(draws[:, 9] > 0).flatten()
        if len(gray):
            x[gray] = _gray(x[gray]).expand(-1, 3, -1, -1)
        blur = torch.nonzero(draws[:, 10] > 0).flatten()
        if len(blur):
            x[blur] = self._blur(x[blur], draws[blur, 10])
        return self.normalize.scaled(x)

    @staticmethod
    def _colour(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
        f = factor.view(-1, 1, 1, 1)
        if op == 0:  # brightness: blend with black
            return (x * f).clamp(0, 1)
        if op == 1:  # contrast: blend with the mean gray level
            mean = _gray(x).mean((1, 2, 3), keepdim=True)
            return (f * x + (1 - f) * mean).clamp(0, 1)
        if op == 2:  # saturation: blend with the grayscale image
            return (f * x + (1 - f) * _gray(x)).clamp(0, 1)
        hsv = _rgb_to_hsv(x)
        hsv[:, 0] = torch.remainder(hsv[:, 0] + f.view(-1, 1, 1), 1.0)
        return _hsv_to_rgb(hsv)

    def _blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """A separable Gaussian per crop: one grouped convolution a direction."""
        n, c, h, w = x.shape
        half = self.kernel // 2
        grid = torch.linspace(-half, half, self.kernel, device=x.device)
        kernel = torch.softmax(-(grid[None] / sigma[:, None]).pow(2) / 2, 1)  # exp normalised to sum 1
        kernel = kernel.repeat_interleave(c, 0)  # [n*c, k]
        y = torch.nn.functional.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
        y = torch.nn.functional.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
        y = torch.nn.functional.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
        return y.view(n, c, h, w)


class Normalize(torch.nn.Module):
    """uint8 images [N, 3, H, W] -> ImageNet-normalised float, on whatever device they are."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():  # already normalised (a float transform)
            return images
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] -> normalised."""
        return ((x * 255 - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


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
