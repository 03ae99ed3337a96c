"""Images as the models read them: uint8 [N, H, W, 3] (how worlds, shards and samples are stored) to
float [N, 3, H, W] tensors in [0, 1] (CLIP, the judge, the encoders) or [-1, 1] (the diffusion models)."""

from __future__ import annotations

import numpy as np
import torch


def _channels_first(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))  # a flipped view has negative strides
    return images.permute(0, 3, 1, 2).float()


def unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return _channels_first(images) / 255.0


def signed_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1], the range the diffusion models denoise."""
    return _channels_first(images) / 127.5 - 1.0
