"""Zero-shot classification for encoders with a text tower: nearest averaged prompt embedding."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn


@torch.no_grad()
def zero_shot(model, cfg: DictConfig, image_features: np.ndarray, labels: np.ndarray,
              prompts: list[list[str]]) -> float:
    """Accuracy of the class whose averaged prompt embedding is nearest the image embedding."""
    from synrep.learning.step import tokenize

    model.eval()
    class_embeddings = []
    for class_prompts in prompts:
        emb = nn.functional.normalize(model.embed_text(tokenize(cfg, class_prompts)), dim=1).mean(0)
        class_embeddings.append(nn.functional.normalize(emb, dim=0))
    text = torch.stack(class_embeddings)
    img = nn.functional.normalize(model.embed_image(torch.from_numpy(image_features)), dim=1)
    return float(((img @ text.T).argmax(1).numpy() == labels).mean())
