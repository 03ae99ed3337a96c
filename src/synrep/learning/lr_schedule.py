"""The learning rate of the representation trainer and of the toy CLIP: linear warm-up, then a
half-cycle cosine from the peak to 0."""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, steps: int, warmup: float, peak: float, *, count_current_step: bool = False) -> float:
    """The lr of optimizer step ``step`` (from 0) of ``steps``: linear warm-up over ``warmup`` steps,
    then half-cycle cosine from ``peak`` to 0 at ``steps``.

    The warm-up counts the steps done, so that step 0 has lr 0 (StableRep's official
    ``adjust_learning_rate``), or with ``count_current_step`` the step being taken too, so that
    step 0 already has peak / warmup and the last warm-up step the peak (the toy CLIP)."""
    if step < warmup:
        return peak * (step + 1 if count_current_step else step) / warmup
    if steps <= warmup:
        return peak
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
