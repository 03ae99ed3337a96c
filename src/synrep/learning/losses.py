"""Contrastive losses: StableRep's multi-positive loss, SimCLR, CLIP and StableRep+.

StableRep (Tian et al. 2023): every sample is an anchor; its candidates are all other samples of
the (global) batch; the target distribution is uniform over the candidates with the same group id
(images of one batch row, i.e. one caption); the loss is the cross-entropy between that target and
softmax(similarity / temperature), averaged over anchors. SimCLR is the same loss with two views of
one image per group. No well-kept library ships the multi-positive form, so it is written here;
CLIP's loss is open_clip's ``ClipLoss``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

_NEG = -1e4  # masks the self-similarity; finite so that 0 * masked stays 0 under fp16/bf16


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients to every rank's part."""
    rank, world = _world()
    if world == 1:
        return x
    import torch.distributed.nn

    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    rank, world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def soft_target_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of softmax(logits) against targets uniform over each row's positives.

    logits, positives: [A, K]. Rows without a positive are left out of the mean (they carry no
    signal); their count is what the caller should keep at zero.
    """
    positives = positives.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    counts = positives.sum(dim=1)
    has_positive = counts > 0
    target = positives / counts.clamp(min=1).unsqueeze(1)
    log_q = F.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=1)
    per_anchor = -(target * log_q).sum(dim=1)
    return per_anchor[has_positive].mean()


def multi_positive_contrastive_loss(
    features: torch.Tensor, group_ids: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """StableRep's loss. features [N, d] (l2-normalised here), group_ids [N].

    Under torch.distributed the candidates are the global batch: features are gathered with
    gradients, and local anchor i is row ``rank * N + i`` of the global batch. Group ids are
    local to each rank's batch rows (rank r's rows are other groups than rank s's, even when the
    numbers coincide), as in the official code where one caption is one batch row.
    """
    if features.ndim != 2 or group_ids.shape != features.shape[:1]:
        raise ValueError(f"features must be [N, d] and group_ids [N]; got {tuple(features.shape)} "
                         f"and {tuple(group_ids.shape)}")
    rank, world = _world()
    local = F.normalize(features, dim=1)
    n = local.shape[0]
    every = gather_with_grad(local)
    ids = gather_no_grad(group_ids)
    owner = torch.arange(world, device=ids.device).repeat_interleave(n)

    logits = local @ every.T / temperature  # [n, world * n]
    self_index = torch.arange(n, device=logits.device) + rank * n
    is_self = F.one_hot(self_index, num_classes=logits.shape[1]).bool()
    logits = logits.masked_fill(is_self, _NEG)
    same_group = (group_ids[:, None] == ids[None, :]) & (owner[None, :] == rank)
    return soft_target_cross_entropy(logits, same_group & ~is_self)


def simclr_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent: the multi-positive loss with the two views of each image as one group."""
    n = view_a.shape[0]
    ids = torch.arange(n, device=view_a.device)
    return multi_positive_contrastive_loss(torch.cat([view_a, view_b]), torch.cat([ids, ids]), temperature)


def image_text_multi_positive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, group_ids: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """StableRep+'s language term: 0.5 * (image->text + text->image).

    text_features [G, d] hold one caption per group (group g is text row g on this rank);
    image_features [N, d] with group_ids [N] in [0, G). An image's positive is its caption; a
    caption's positives are all m of its images. Candidates are global under torch.distributed.
    """
    rank, world = _world()
    img = F.normalize(image_features, dim=1)
    txt = F.normalize(text_features, dim=1)
    g = txt.shape[0]
    all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
    all_ids = gather_no_grad(group_ids)
    img_owner = torch.arange(world, device=all_ids.device).repeat_interleave(img.shape[0])
    scale = logit_scale.exp()

    # image -> text: local images against all captions; the positive is (rank, group_id)
    i2t_pos = F.one_hot(group_ids + rank * g, num_classes=world * g).bool()
    i2t = soft_target_cross_entropy(scale * img @ all_txt.T, i2t_pos)
    # text -> image: local captions against all images; positives are its m images
    t2i_pos = (torch.arange(g, device=all_ids.device)[:, None] == all_ids[None, :]) & (img_owner[None, :] == rank)
    t2i = soft_target_cross_entropy(scale * txt @ all_img.T, t2i_pos)
    return 0.5 * (i2t + t2i)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric image-text InfoNCE, from open_clip (global batch under torch.distributed)."""
    from open_clip.loss import ClipLoss

    rank, world = _world()
    loss = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=False, rank=rank, world_size=world)
    return loss(F.normalize(image_features, dim=1), F.normalize(text_features, dim=1), logit_scale.exp())
