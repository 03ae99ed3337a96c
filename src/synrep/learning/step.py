"""One training step, shared by the trainer, ``benchmarks/train_step.py`` and the DDP tests."""

from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig

from synrep.learning import methods


def caption_tokens(cfg: DictConfig, captions: list[str]) -> torch.Tensor:
    """The captions' token ids, each caption tokenized once per process: a run draws the same
    captions pass after pass, and BPE with its text clean-up was a tenth of a toy CLIP step."""
    context_length = int(cfg.train.text.context_length)
    return torch.stack([_caption_tokens(context_length, caption) for caption in captions])


@functools.lru_cache(maxsize=1 << 17)
def _caption_tokens(context_length: int, caption: str) -> torch.Tensor:
    from synrep.learning.models import bpe_tokenizer

    return bpe_tokenizer(context_length)([caption])[0]


def forward_loss(cfg: DictConfig, model: torch.nn.Module, images: torch.Tensor, group_ids: torch.Tensor,
                 captions: list[str], amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict]:
    """Forward pass and the method's loss (under autocast when ``amp_dtype`` is set)."""
    method = methods.get(cfg.train.method)
    tokens = caption_tokens(cfg, captions).to(images.device) if method.text else None
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        outputs = model(images, tokens, views=method.crops_per_row(cfg.train.m))
    return method.loss(cfg, {k: v.float() for k, v in outputs.items()}, group_ids)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
