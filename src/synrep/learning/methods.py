"""Each training method's loss, on the table of synrep/training_methods.py (where a method is declared,
with what a batch row holds and which heads it needs; the config reads that table when it loads)."""

from __future__ import annotations

from dataclasses import dataclass

from synrep import training_methods
from synrep.training_methods import Method


@dataclass(frozen=True)
class TrainingMethod(Method):
    def loss(self, cfg, out: dict, group_ids) -> tuple:
        """The loss of one step from the model's outputs (group ids: local batch rows), and its parts."""
        from synrep.learning import losses

        t = cfg.train
        parts = {}
        if self.image_loss:
            # SimCLR's rows hold the two crops of one image: the same loss with one positive each
            parts["image"] = losses.multi_positive_contrastive_loss(out["projection"], group_ids, t.temperature)
        if self.text and self.image_loss:
            parts["text"] = t.text_loss_weight * 2 * losses.image_text_multi_positive_loss(
                out["image_embedding"], out["text_embedding"], group_ids, out["logit_scale"])
        elif self.text:
            parts["text"] = losses.clip_loss(out["image_embedding"], out["text_embedding"], out["logit_scale"])
        loss = sum(parts.values())
        return loss, {k: float(v.detach()) for k, v in parts.items()}


METHODS: dict[str, TrainingMethod] = {name: TrainingMethod(**vars(m)) for name, m in training_methods.METHODS.items()}


def get(name: str) -> TrainingMethod:
    training_methods.get(name)  # its error for an unknown name
    return METHODS[name]
