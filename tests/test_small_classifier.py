"""The judge and the domain classifier are one small classifier (evaluation/small_classifier.py):
each trains to the same weights and accuracy as a loop written out here, the one each module had of
its own before they shared it."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests.conftest import tmp_overrides


def reference_training(n_classes: dict[str, int], images: np.ndarray, labels: dict[str, np.ndarray], seed: int,
                       epochs: int, fused: bool):
    """The classifiers' own loop, spelled out: a toy_cnn_wide trunk with a linear head per label,
    AdamW (fused for the judge) under one-cycle, batches of 128 with random flips."""
    import timm
    import torch
    import torch.nn.functional as F
    from torch import nn

    import synrep.learning.encoders  # noqa: F401  (registers toy_cnn with timm)

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = timm.create_model("toy_cnn_wide", num_classes=0)
            self.heads = nn.ModuleDict({k: nn.Linear(self.trunk.num_features, n) for k, n in n_classes.items()})

        def forward(self, x):
            z = self.trunk(x)
            return {k: head(z) for k, head in self.heads.items()}

    torch.manual_seed(seed)
    model = Reference().to(memory_format=torch.channels_last)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).contiguous(memory_format=torch.channels_last)
    steps = epochs * (len(x) // 128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4, fused=fused)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        xb = x[idx]
        flip = torch.rand(128, generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        out = model(xb)
        if len(labels) == 1:  # the domain classifier's loss: its one head's, not a sum
            (k, y), = labels.items()
            loss = F.cross_entropy(out[k], torch.from_numpy(y)[idx])
        else:
            loss = sum(F.cross_entropy(out[k], torch.from_numpy(y)[idx]) for k, y in labels.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()

    @torch.no_grad()
    def read(test_images: np.ndarray) -> dict[str, np.ndarray]:
        batches = [model(torch.from_numpy(test_images[i:i + 512]).permute(0, 3, 1, 2).float().div(255.0))
                   for i in range(0, len(test_images), 512)]
        return {k: np.concatenate([b[k].argmax(1).numpy() for b in batches]) for k in n_classes}

    return model.state_dict(), read


def assert_same_weights(trained, reference) -> None:
    import torch

    assert list(trained) == list(reference)
    assert all(torch.equal(trained[name], reference[name]) for name in reference)


@pytest.fixture
def cfg(small_world):
    import torch

    from synrep.config import load_config

    torch.set_num_threads(1)
    return load_config(tmp_overrides(small_world))


def test_the_judge_trains_as_its_own_loop_did(cfg):
    from synrep.data import toy_vocabulary, toyworld
    from synrep.evaluation import attribute_classifier as ac

    names = toy_vocabulary.attribute_names(cfg)
    train, test = toyworld.load_split(cfg, "train"), toyworld.load_split(cfg, "test")
    model, accuracy = ac.train_classifier(cfg, seed=3, epochs=2)
    weights, read = reference_training({k: len(names[k]) for k in ac.ATTRIBUTES}, train["images"],
                                       {k: train[k] for k in ac.ATTRIBUTES}, seed=3, epochs=2, fused=True)
    assert_same_weights(model.state_dict(), weights)
    predicted = read(test["images"])
    assert accuracy == {k: float((predicted[k] == test[k]).mean()) for k in ac.ATTRIBUTES}
    digest = hashlib.sha256()
    for key in ("images", *ac.ATTRIBUTES):
        digest.update(np.ascontiguousarray(train[key]).tobytes())
    assert ac.recipe(cfg)["train_sha256"] == digest.hexdigest()


def test_the_domain_classifier_trains_as_its_own_loop_did(cfg):
    from synrep.evaluation import domain_classifier as dc

    images, labels = dc.domain_data(cfg, "train")
    model, held_out = dc.train_classifier(cfg, seed=5, epochs=3)
    weights, read = reference_training({dc.HEAD: len(dc.domain_names(cfg))}, images, {dc.HEAD: labels}, seed=5,
                                       epochs=3, fused=False)
    assert_same_weights(model.state_dict(), weights)
    test_images, test_labels = dc.domain_data(cfg, "test")
    predicted = read(test_images)[dc.HEAD]
    assert held_out == {"accuracy": float((predicted == test_labels).mean()),
                        **{f"recall_{name}": float((predicted[test_labels == i] == i).mean())
                           for i, name in enumerate(dc.domain_names(cfg))}}
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    assert dc.recipe(cfg)["train_sha256"] == digest.hexdigest()
