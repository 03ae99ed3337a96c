"""The contrastive losses against references written another way, and under 2 gloo processes."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from synrep.learning.losses import (
    clip_loss,
    image_text_multi_positive_loss,
    multi_positive_contrastive_loss,
    simclr_loss,
)


def reference_multi_positive(features, group_ids, temperature):
    """The loss as StableRep defines it (docs/paper-facts.md), anchor by anchor with Python loops, in float64."""
    z = [f / math.sqrt(sum(float(v) ** 2 for v in f)) for f in features.double()]
    n = len(z)
    total, anchors = 0.0, 0
    for a in range(n):
        others = [b for b in range(n) if b != a]
        sims = [float(z[a] @ z[b]) / temperature for b in others]
        top = max(sims)
        log_norm = top + math.log(sum(math.exp(s - top) for s in sims))
        matches = [b for b in others if group_ids[b] == group_ids[a]]
        if not matches:
            continue
        loss = 0.0
        for b, s in zip(others, sims):
            if group_ids[b] == group_ids[a]:
                loss -= (1.0 / len(matches)) * (s - log_norm)
        total += loss
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("m", [2, 3, 6])
def test_multi_positive_matches_float64_reference(m):
    gen = torch.Generator().manual_seed(m)
    n_groups = 5
    features = torch.randn(n_groups * m, 16, generator=gen, dtype=torch.float64) * 3
    group_ids = torch.arange(n_groups).repeat_interleave(m)
    ours = multi_positive_contrastive_loss(features, group_ids, temperature=0.1)
    assert ours.item() == pytest.approx(reference_multi_positive(features, group_ids.tolist(), 0.1), rel=1e-10)


def test_group_ids_need_not_be_contiguous_and_scale_is_ignored():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    group_ids = torch.tensor([7, 3, 7, 3, 9, 9, 1, 1, 1, 4, 4, 7])
    ref = reference_multi_positive(features, group_ids.tolist(), 0.2)
    assert multi_positive_contrastive_loss(features, group_ids, 0.2).item() == pytest.approx(ref, rel=1e-10)
    # l2-normalised inside: scaling a feature changes nothing
    scaled = features * torch.linspace(0.5, 4, 12, dtype=torch.float64)[:, None]
    assert multi_positive_contrastive_loss(scaled, group_ids, 0.2).item() == pytest.approx(ref, rel=1e-10)


def test_gradient_of_multi_positive_loss():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(8, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    group_ids = torch.arange(4).repeat_interleave(2)
    assert torch.autograd.gradcheck(lambda f: multi_positive_contrastive_loss(f, group_ids, 0.3), (features,))


def test_simclr_is_nt_xent():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, 8, generator=gen, dtype=torch.float64), torch.randn(6, 8, generator=gen, dtype=torch.float64)
    # NT-Xent as SimCLR writes it: 2N x 2N similarities, self masked with -inf, cross-entropy to the other view
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / 0.1
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(6, 12), torch.arange(0, 6)])
    expected = F.cross_entropy(sim, target)
    assert simclr_loss(a, b, 0.1).item() == pytest.approx(expected.item(), rel=1e-10)


def test_loss_at_perfect_and_at_wrong_groups_has_its_closed_form():
    """8 groups of 4 one-hot features, temperature 0.1: an anchor's 3 group mates have similarity 10,
    the other 28 candidates 0. With the true groups the loss is log(3 + 28 e^-10), near its minimum
    log 3; with groups that put each anchor with 3 strangers it is 10 + log(3 + 28 e^-10)."""
    true_group = torch.arange(8).repeat_interleave(4)
    features = F.one_hot(true_group, 8).double()
    floor = math.log(3 + 28 * math.exp(-10))
    assert multi_positive_contrastive_loss(features, true_group, 0.1).item() == pytest.approx(floor, rel=1e-12)
    # sample i of true group g goes to group (g + 2 i) % 8: each group's 4 members from 4 true groups
    strangers = (true_group + 2 * (torch.arange(32) % 4)) % 8
    assert torch.bincount(strangers).tolist() == [4] * 8
    assert all(len(set(true_group[strangers == h].tolist())) == 4 for h in range(8))
    assert multi_positive_contrastive_loss(features, strangers, 0.1).item() == pytest.approx(10 + floor, rel=1e-12)


def test_clip_loss_matches_symmetric_cross_entropy():
    gen = torch.Generator().manual_seed(3)
    img, txt = torch.randn(7, 8, generator=gen), torch.randn(7, 8, generator=gen)
    scale = torch.tensor(math.log(1 / 0.07))
    logits = scale.exp() * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    expected = 0.5 * (F.cross_entropy(logits, torch.arange(7)) + F.cross_entropy(logits.T, torch.arange(7)))
    assert clip_loss(img, txt, scale).item() == pytest.approx(expected.item(), rel=1e-5)


def test_stablerep_plus_text_term():
    gen = torch.Generator().manual_seed(4)
    m, groups = 3, 4
    img = torch.randn(groups * m, 8, generator=gen, dtype=torch.float64)
    txt = torch.randn(groups, 8, generator=gen, dtype=torch.float64)
    ids = torch.arange(groups).repeat_interleave(m)
    scale = torch.tensor(2.0, dtype=torch.float64)
    logits = scale.exp() * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T  # [images, captions]
    i2t = F.cross_entropy(logits, ids)
    # caption -> images: uniform target over its m images
    target = F.one_hot(ids, groups).T.double() / m
    t2i = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    expected = 0.5 * (i2t + t2i)
    assert image_text_multi_positive_loss(img, txt, ids, scale).item() == pytest.approx(expected.item(), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# torch.distributed: 2 gloo processes against one process on the concatenated batch
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, features, group_ids, text, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = features.shape[0] // world
        g = text.shape[0] // world
        local = features[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        local_text = text[rank * g:(rank + 1) * g].clone().requires_grad_(True)
        # group ids are local batch rows on every rank
        local_ids = group_ids[rank * n:(rank + 1) * n] - rank * g
        loss = multi_positive_contrastive_loss(local, local_ids, 0.1)
        loss.backward()
        plus = image_text_multi_positive_loss(local.detach().requires_grad_(True), local_text, local_ids,
                                              torch.tensor(1.5, dtype=torch.float64))
        plus.backward()
        results[rank] = (loss.item(), local.grad.clone(), plus.item(), local_text.grad.clone())
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_on_the_concatenated_batch():
    world, m, groups = 2, 3, 8
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(groups * m, 6, generator=gen, dtype=torch.float64)
    text = torch.randn(groups, 6, generator=gen, dtype=torch.float64)
    group_ids = torch.arange(groups).repeat_interleave(m)

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(world, _free_port(), features, group_ids, text, results), nprocs=world, join=True)

    whole = features.clone().requires_grad_(True)
    loss = multi_positive_contrastive_loss(whole, group_ids, 0.1)
    loss.backward()
    whole_text = text.clone().requires_grad_(True)
    plus = image_text_multi_positive_loss(features, whole_text, group_ids, torch.tensor(1.5, dtype=torch.float64))
    plus.backward()

    # DDP averages the ranks' gradients: mean of per-rank losses = the global mean over anchors
    mean_loss = sum(results[r][0] for r in range(world)) / world
    assert mean_loss == pytest.approx(loss.item(), rel=1e-10)
    grads = torch.cat([results[r][1] for r in range(world)]) / world
    torch.testing.assert_close(grads, whole.grad, rtol=1e-9, atol=1e-12)
    assert sum(results[r][2] for r in range(world)) / world == pytest.approx(plus.item(), rel=1e-10)
    text_grads = torch.cat([results[r][3] for r in range(world)]) / world
    torch.testing.assert_close(text_grads, whole_text.grad, rtol=1e-9, atol=1e-12)
