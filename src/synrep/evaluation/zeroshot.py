"""Zero-shot classification for encoders with a text tower: nearest averaged prompt embedding."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn


@torch.no_grad()
def zero_shot_predictions(model, cfg: DictConfig, image_features: np.ndarray, prompts: list[list[str]]) -> np.ndarray:
    """The class (index into ``prompts``) whose averaged prompt embedding is nearest each image embedding."""
    from synrep.learning.step import caption_tokens

    model.eval()
    # the job's device, where evaluation put the model
    weight = next(iter(model.parameters()), None)
    device = weight.device if weight is not None else torch.device("cpu")
    class_embeddings = []
    for class_prompts in prompts:
        emb = nn.functional.normalize(model.embed_text(caption_tokens(cfg, class_prompts).to(device)), dim=1).mean(0)
        class_embeddings.append(nn.functional.normalize(emb, dim=0))
    text = torch.stack(class_embeddings)
    img = nn.functional.normalize(model.embed_image(torch.from_numpy(image_features).to(device)), dim=1)
    return (img @ text.T).argmax(1).cpu().numpy()


def zero_shot(model, cfg: DictConfig, image_features: np.ndarray, labels: np.ndarray,
              prompts: list[list[str]]) -> float:
    """Accuracy of the class whose averaged prompt embedding is nearest the image embedding."""
    return float((zero_shot_predictions(model, cfg, image_features, prompts) == labels).mean())
