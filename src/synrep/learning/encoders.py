"""Small image encoders registered with timm, for the toy world's 16-32 px images.

timm's smallest models cost too much at toy scale on a 2-core CPU (vit_tiny with patch 4 at 32 px:
6 s a step at batch 256), so synrep registers a plain CNN under timm's registry. It is then
created like any timm model: ``timm.create_model("toy_cnn", num_classes=0)``.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from synrep.settings import InputError


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ToyCNN(nn.Module):
    """Five 3x3 conv-BN-ReLU layers (two with stride 2), global average pooling, linear head."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: int = 32,
                 drop_rate: float = 0.0, global_pool: str = "avg", **_: object):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(in_chans, w, 1),
            _block(w, 2 * w, 2),
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),
            _block(4 * w, 4 * w, 1),
        )
        self.num_features = self.head_hidden_size = 4 * w
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.default_cfg = self.pretrained_cfg = {"input_size": (in_chans, 16, 16), "num_classes": num_classes}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        if pre_logits:
            return x
        return self.head(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


@register_model
def toy_cnn(pretrained: bool = False, **kwargs) -> ToyCNN:
    if pretrained:
        raise InputError("toy_cnn has no pretrained weights")
    return ToyCNN(**kwargs)


@register_model
def toy_cnn_wide(pretrained: bool = False, **kwargs) -> ToyCNN:
    if pretrained:
        raise InputError("toy_cnn_wide has no pretrained weights")
    return ToyCNN(width=64, **kwargs)
