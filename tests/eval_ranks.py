"""Evaluation under torch.distributed, for tests/test_eval_resume.py.

Run by ``torchrun --nproc_per_node 2``: every rank extracts its block of a random encoder's features
into OUT/features and encodes its share of the augmented probe's crops (the mean colour of each crop,
a feature no batch changes); rank 0 saves the features and the probe's result to OUT/ranks.pt.
Then every rank evaluates the run in OUT/run (its model.pt) with the augmented probe, twice: the
second call finds it finished (rank 0 returns it, the others None).

    python tests/eval_ranks.py OUT key=value ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def mean_colour(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(2, 3))


def main(out: str, overrides: list[str]) -> None:
    from synrep.config import load_config
    from synrep.evaluation import evaluate
    from synrep.evaluation.features import SPLITS, load_eval_data
    from synrep.evaluation.linear_probe import linear_probe_augmented
    from synrep.learning.trainer import build_model

    cfg = load_config(overrides)
    torch.set_num_threads(1)
    job = evaluate.eval_job(cfg)
    data = load_eval_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    features = evaluate.job_features(model.features, data, cfg, job, SPLITS, "ranks", Path(out) / "features", "key")
    colours = evaluate.job_features(mean_colour, data, cfg, job, ("val", "test"), "colours", Path(out) / "colours",
                                    "key")
    target = next(iter(data.labels))
    e = cfg.eval
    probe = linear_probe_augmented(mean_colour, data.train_images, cfg.train.image_size, colours, data.labels[target],
                                   len(data.class_names[target]), list(e.probe_lrs), e.probe_epochs,
                                   e.probe_batch_size, e.probe_batchnorm, seed=3, eval_every=e.probe_eval_every,
                                   rank=job.rank, world_size=job.world_size)
    augmented = cfg.copy()
    augmented.eval.probe_augment = True
    first = evaluate.evaluate_run(augmented, Path(out) / "run")
    again = evaluate.evaluate_run(augmented, Path(out) / "run")
    if job.is_main:
        assert again == first
        torch.save({"features": features, "probe": probe, "world_size": job.world_size}, Path(out) / "ranks.pt")
    else:
        assert features is None and probe is None and first is None and again is None


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
