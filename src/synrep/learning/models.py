"""Image encoders from timm, projection heads, and the open_clip text tower.

- image backbone: any timm model by name (``train.encoder``), created with ``num_classes=0`` so it
  returns pooled features (the CLS token for ViTs); the toy world uses the timm-registered
  ``toy_cnn`` (``synrep.encoders``), the paper ``vit_base_patch16_224``;
- projection head: the paper's MLP, BatchNorm + ReLU after the first two layers
  (768-4096-4096-256 for ViT-B/16), applied to each view apart as the official code does ("do
  separate BN"): view j holds the j-th crop of every batch row, so the BatchNorm statistics never
  pool the positives of one caption; under DDP they are synchronised (``distributed.sync_batchnorm``);
- text tower (CLIP, StableRep+): open_clip's ``TextTransformer`` built from config, with
  open_clip's BPE tokenizer (its vocabulary ships in the wheel: no download).
"""

from __future__ import annotations

import functools
import math

import timm
import torch
from omegaconf import DictConfig
from torch import nn

import synrep.learning.encoders  # noqa: F401  (registers the toy encoders with timm)
from synrep.settings import ConfigError


def create_backbone(cfg: DictConfig) -> nn.Module:
    t = cfg.train
    kwargs = dict(t.encoder_kwargs)
    try:
        return timm.create_model(t.encoder, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ConfigError(f"config key 'train.encoder': timm has no model {t.encoder!r}") from None
        raise


class ProjectionHead(nn.Sequential):
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear: StableRep's ``image_mlp`` (models/StableRep.py)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__(
            nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, dim_out),
        )

    def per_view(self, feats: torch.Tensor, views: int) -> torch.Tensor:
        """The head on each view apart: ``feats`` are row-major [rows * views, d] (a row's crops
        next to each other); view j is ``feats[j::views]``. Output in the same order."""
        if views == 1:
            return self(feats)
        rows = feats.shape[0] // views
        by_view = feats.view(rows, views, -1).transpose(0, 1)
        out = torch.stack([self(by_view[j]) for j in range(views)], dim=1)
        return out.reshape(rows * views, -1)


def tokenizer(cfg: DictConfig):
    return bpe_tokenizer(int(cfg.train.text.context_length))


@functools.lru_cache(maxsize=4)
def bpe_tokenizer(context_length: int):
    # built once per process: loading the BPE merges takes ~0.1 s, as long as a toy training step
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def create_text_tower(cfg: DictConfig, output_dim: int) -> nn.Module:
    from open_clip.transformer import TextTransformer

    text = cfg.train.text
    tok = tokenizer(cfg)
    return TextTransformer(
        context_length=text.context_length,
        vocab_size=tok.vocab_size,
        width=text.width,
        heads=text.heads,
        layers=text.layers,
        output_dim=output_dim,
        pad_id=0,
        eos_id=tok.eot_token_id,
        pool_type="argmax",
    )


class RepresentationModel(nn.Module):
    """Backbone + heads for every method.

    ``forward_image`` gives the projection used by the image-image loss; ``embed_image`` gives
    the image embedding in the joint image-text space; ``features`` is what evaluation uses
    (the backbone's pooled output, before any head).
    """

    def __init__(self, cfg: DictConfig, method: str):
        super().__init__()
        t = cfg.train
        self.method = method
        self.backbone = create_backbone(cfg)
        dim = self.backbone.num_features
        if method in ("stablerep", "simclr", "stablerep_plus"):
            self.head = ProjectionHead(dim, t.head_hidden, t.head_out)
        if method in ("clip", "stablerep_plus"):
            self.image_proj = nn.Linear(dim, t.text.embed_dim, bias=False)
            self.text = create_text_tower(cfg, t.text.embed_dim)
            # CLIP's learnable temperature, initialised at 1/0.07
            self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())

    @property
    def has_text(self) -> bool:
        return hasattr(self, "text")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_proj(features)

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None,
                views: int = 1) -> dict[str, torch.Tensor]:
        """Everything a loss needs, in one call (DistributedDataParallel hooks ``forward`` only).
        ``views``: crops per batch row, the head's BatchNorm sees one view at a time."""
        feats = self.backbone(images)
        out = {}
        if hasattr(self, "head"):
            out["projection"] = self.head.per_view(feats, views)
        if self.has_text:
            out["image_embedding"] = self.image_proj(feats)
            if tokens is not None:
                out["text_embedding"] = self.text(tokens)
            # CLIP clamps the learnable temperature at 100
            out["logit_scale"] = self.logit_scale.clamp(max=math.log(100.0))
        return out


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, embeddings' positions and the logit scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or "logit_scale" in name or "positional_embedding" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
