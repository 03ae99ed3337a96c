"""Small image helpers with no model imports (a job that only draws a grid should not pay for diffusers)."""

from __future__ import annotations

import math

import numpy as np


def image_grid(images: np.ndarray, rows: int, scale: int = 4) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one grid image, each cell upscaled by ``scale`` (nearest)."""
    n, h, w, c = images.shape
    cols = math.ceil(n / rows)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = img
    return grid.repeat(scale, 0).repeat(scale, 1)
