"""NADA's CLIP losses (StyleGAN-NADA's ``criteria/clip_loss.py``) for the toy generator's adaptation
(``recipes/nada.py``): the text direction ΔT, the directional and global losses, and the
weighted sum over several CLIPs (``nada.clip_models``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def text_direction(guide, source: list[list[str]], target: list[list[str]]) -> torch.Tensor:
    """ΔT, a unit vector [D]: the mean over templates (and objects) of the unit target text embedding
    minus the unit source one, normalised (NADA's ``compute_text_direction``)."""
    src = torch.stack([guide.text_embeddings(p).mean(0) for p in source]).mean(0)
    tgt = torch.stack([guide.text_embeddings(p).mean(0) for p in target]).mean(0)
    direction = tgt - src
    return direction / direction.norm()


@torch.no_grad()
def text_embedding(guide, target: list[list[str]]) -> torch.Tensor:
    """The unit mean text embedding [D] of the target prompts (the global loss's text)."""
    emb = torch.stack([guide.text_embeddings(p).mean(0) for p in target]).mean(0)
    return emb / emb.norm()


# |ΔI| below this counts as this in the cosine's denominator (unit embeddings; a real photo ->
# drawing pair differs by |ΔI| 1.02 ± 0.21, scripts/nada_checks.py). Both copies start equal, ΔI = 0, where the cosine's gradient is
# ΔT / |ΔI|: unbounded, and one such first step fills Adam's second moment so that the next hundreds
# of steps barely move (seen: weights moved by lr once, then ~0). NADA's StyleGAN2 never meets
# ΔI = 0 (its noise injections differ between the copies); here the loss is linear along ΔT until
# the change is this large, and exactly 1 − cos(ΔI, ΔT) beyond.
DELTA_FLOOR = 0.05


def directional_loss(train_emb: torch.Tensor, frozen_emb: torch.Tensor, direction: torch.Tensor,
                     floor: float = DELTA_FLOOR) -> torch.Tensor:
    """NADA's L_direction: the batch mean of 1 − cos(ΔI, ΔT), ΔI = train_emb − frozen_emb per row,
    with |ΔI| taken as at least ``floor`` (1 − ΔI·ΔT / floor below it; see ``DELTA_FLOOR``)."""
    delta = train_emb - frozen_emb
    cos = (delta * direction).sum(-1) / (delta.norm(dim=-1).clamp_min(floor) * direction.norm())
    return (1 - cos).mean()


def global_loss(emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """NADA's global CLIP loss: the batch mean of 1 − cos(E_I(G), E_T(target))."""
    return (1 - F.cosine_similarity(emb, text.expand_as(emb), dim=-1)).mean()


def weighted_sum(terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """Σ weight · term over NADA's CLIPs (``nada.clip_model_weights``)."""
    total = terms[0][0] * terms[0][1]
    for weight, term in terms[1:]:
        total = total + weight * term
    return total
