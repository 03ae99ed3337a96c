"""The training methods, each declared once: what a batch row holds, which heads it needs, its loss.

| method | a batch row | loss |
| --- | --- | --- |
| ``stablerep`` | m of the caption's first l images, one crop each (m = 1: two crops, = SimCLR) | multi-positive contrastive |
| ``simclr`` | one image, two crops | InfoNCE (the same loss with two crops of one image) |
| ``clip`` | one image and its caption | CLIP's symmetric image-text loss, learnt temperature |
| ``stablerep_plus`` | as ``stablerep``, plus the caption | multi-positive + text_loss_weight x image-text |

Nothing but the standard library: the config checks method names against this table when it loads.
Each method's loss, which needs torch, is in learning/methods.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SampleSpec:
    """How one batch row is drawn from a caption's stored images."""

    images: int  # distinct source images per row (m for StableRep, 1 for SimCLR / CLIP)
    views: int  # augmented crops per source image (2 for SimCLR)
    use_first: int | None  # l: only the first l stored images are used (None: all)


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # in tables and plots
    multi_positive: bool  # a row holds m images of one caption (so m is a sweep axis)
    views: int  # crops per source image
    image_loss: bool  # the image-image contrastive loss on the projection head
    text: bool  # the caption goes through the text tower (image-text loss, zero-shot)

    def images_per_row(self, m: int) -> int:
        return int(m) if self.multi_positive else 1

    def crops_per_image(self, m: int) -> int:
        """The official --num_crop: one crop per image, except that a row of one image needs two
        crops to hold a positive pair (StableRep at m = 1 is SimCLR, as in the paper's m ablation)."""
        return 2 if self.multi_positive and int(m) == 1 else self.views

    def crops_per_row(self, m: int) -> int:
        return self.images_per_row(m) * self.crops_per_image(m)

    def sample_spec(self, l: int | None, m: int) -> SampleSpec:
        return SampleSpec(images=self.images_per_row(m), views=self.crops_per_image(m), use_first=l)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("stablerep", "StableRep", multi_positive=True, views=1, image_loss=True, text=False),
    Method("stablerep_plus", "StableRep+", multi_positive=True, views=1, image_loss=True, text=True),
    Method("simclr", "SimCLR", multi_positive=False, views=2, image_loss=True, text=False),
    Method("clip", "CLIP", multi_positive=False, views=1, image_loss=False, text=True),
)}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; one of {list(METHODS)}")
    return METHODS[name]
