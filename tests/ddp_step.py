"""One training step of ``synrep.train`` under torch.distributed, for the DDP tests.

Run by ``torchrun --nproc_per_node 2`` or ``srun -n 2``: every rank builds the same model, takes its
rows of a fixed batch, and runs forward, loss and backward through DistributedDataParallel, as
``train()`` does. Rank 0 saves the loss (mean over ranks) and the averaged gradients.

    python tests/ddp_step.py BATCH.pt OUT.pt key=value ...
"""

from __future__ import annotations

import sys

import torch


def main(batch_path: str, out_path: str, overrides: list[str]) -> None:
    from synrep.config import load_config
    from synrep.learning import distributed
    from synrep.learning.step import forward_loss
    from synrep.learning.trainer import build_model

    cfg = load_config(overrides)
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    batch = torch.load(batch_path)
    rows = len(batch["captions"]) // info.world_size
    per_row = batch["images"].shape[0] // len(batch["captions"])
    lo, hi = info.rank * rows, (info.rank + 1) * rows
    images = batch["images"][lo * per_row:hi * per_row]
    group_ids = torch.arange(rows).repeat_interleave(per_row)
    captions = batch["captions"][lo:hi]

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    model = distributed.wrap_model(model, torch.device("cpu"), info)
    loss, _ = forward_loss(cfg, model, images, group_ids, captions)
    loss.backward()
    mean_loss = distributed.all_reduce_mean(float(loss))
    if info.is_main:
        module = model.module if info.enabled else model
        grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
        torch.save({"loss": mean_loss, "grads": grads, "world_size": info.world_size,
                    "source": info.source}, out_path)
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
