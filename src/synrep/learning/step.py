"""One training step, shared by the trainer, ``benchmarks/train_step.py`` and the DDP tests."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from synrep.learning import methods


def tokenize(cfg: DictConfig, captions: list[str]) -> torch.Tensor:
    from synrep.learning.models import tokenizer

    return tokenizer(cfg)(captions)


def forward_loss(cfg: DictConfig, model: torch.nn.Module, images: torch.Tensor, group_ids: torch.Tensor,
                 captions: list[str], amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict]:
    """Forward pass and the method's loss (under autocast when ``amp_dtype`` is set)."""
    method = methods.get(cfg.train.method)
    tokens = tokenize(cfg, captions).to(images.device) if method.text else None
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        outputs = model(images, tokens, views=method.crops_per_row(cfg.train.m))
    return method.loss(cfg, {k: v.float() for k, v in outputs.items()}, group_ids)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
