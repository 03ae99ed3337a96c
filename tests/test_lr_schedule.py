"""One warm-up cosine for the trainer and the toy CLIP: every step gives exactly the lr that each
one's own schedule gave (their formulas written out here as they were)."""

from __future__ import annotations

import math

import pytest

from synrep.learning.lr_schedule import warmup_cosine_lr


def trainer_lr(step: int, steps: int, warm: float, peak: float) -> float:
    """The trainer's schedule as it was: the warm-up counts the steps done (official StableRep)."""
    if step < warm:
        return peak * step / warm
    if steps <= warm:
        return peak
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / (steps - warm)))


def toy_clip_lr(step: int, steps: int, warmup: int, peak: float) -> float:
    """The toy CLIP's schedule as it was: the warm-up counts the step being taken."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


# the trainer's warm-up is a float (warmup_epochs x steps per epoch, at most the steps)
@pytest.mark.parametrize("steps, warm, peak", [(100, 12.5, 3.225e-3), (1000, 125.0, 2.34375e-4), (7, 0.0, 1e-3),
                                               (10, 10.0, 0.1), (33, 0.7, 0.3), (5, 4.999, 2e-4)])
def test_the_trainers_lr_is_unchanged_at_every_step(steps, warm, peak):
    assert [warmup_cosine_lr(s, steps, warm, peak) for s in range(steps)] == [
        trainer_lr(s, steps, warm, peak) for s in range(steps)]


@pytest.mark.parametrize("steps, warmup, peak", [(600, 50, 5e-4), (40, 0, 1e-3), (10, 10, 0.1), (8, 20, 0.1),
                                                 (97, 13, 3e-4), (1, 0, 1.0)])
def test_the_toy_clips_lr_is_unchanged_at_every_step(steps, warmup, peak):
    assert [warmup_cosine_lr(s, steps, warmup, peak, count_current_step=True) for s in range(steps)] == [
        toy_clip_lr(s, steps, warmup, peak) for s in range(steps)]


def test_the_two_warm_ups_differ_by_a_step():
    steps, warmup, peak = 20, 4, 1.0
    done = [warmup_cosine_lr(s, steps, warmup, peak) for s in range(steps)]
    taking = [warmup_cosine_lr(s, steps, warmup, peak, count_current_step=True) for s in range(steps)]
    assert done[:5] == [0.0, 0.25, 0.5, 0.75, 1.0] and taking[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert done[warmup:] == taking[warmup:] and done[-1] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
