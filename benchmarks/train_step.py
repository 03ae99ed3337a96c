"""Seconds per training step of the configured encoder and method, for ``python -m synrep plan``.

    python benchmarks/train_step.py [key=value ...]      e.g. experiment=paper_cc3m_ablations

Times forward + loss + backward + AdamW on random images at ``train.batch_images`` crops per step
divided by the number of processes (run it under torchrun with the cluster's GPUs per node for a
per-node figure), and prints a table and the value for ``plan.seconds_per_train_step``.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--world-size", type=int, default=None,
                        help="processes the global batch is split over (default: launch.nodes x gpus_per_node)")
    args = parser.parse_args()

    from synrep.config import load_config
    from synrep.learning import methods
    from synrep.learning.step import forward_loss, optimizer_step
    from synrep.learning.trainer import autocast_dtype, build_model, build_optimizer, resolve_device

    cfg = load_config(args.overrides)
    t = cfg.train
    torch.set_num_threads(cfg.threads)
    world = args.world_size or cfg.launch.nodes * max(1, cfg.launch.gpus_per_node)
    device = resolve_device(t.device)
    k = methods.get(t.method).crops_per_row(t.m)
    rows = max(2, t.batch_images // (k * world))  # one rank's rows, as training_length
    model = build_model(cfg).to(device).train()
    optimizer = build_optimizer(cfg, model)
    amp = autocast_dtype(t.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    images = torch.randn(rows * k, 3, t.image_size, t.image_size, device=device)
    ids = torch.arange(rows, device=device).repeat_interleave(k)
    captions = ["a photo of a dog"] * rows

    def step() -> None:
        # the trainer's own step: forward, the method's loss, backward, AdamW
        loss, _ = forward_loss(cfg, model, images, ids, captions, amp)
        optimizer_step(loss, optimizer, scaler)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    # evaluation: the frozen encoder's features, forward only, at the evaluation batch size
    encoder = model.backbone.eval() if hasattr(model, "backbone") else model.eval()
    eval_batch = torch.randn(min(cfg.eval.batch_size, rows * k), 3, t.image_size, t.image_size, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        encoder(eval_batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        for _ in range(args.steps):
            encoder(eval_batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
    per_image = (time.perf_counter() - begin) / args.steps / len(eval_batch)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{cfg.threads}"
    print("| encoder | method | crops/step/process | device | s/step | s/evaluated image |")
    print("|---|---|---|---|---|---|")
    print(f"| {t.encoder} | {t.method} | {rows * k} | {name} | {seconds:.4f} | {per_image:.3g} |")
    print(f"\npython -m synrep plan {' '.join(args.overrides)} plan.seconds_per_train_step={seconds:.4f} "
          f"plan.seconds_per_eval_image={per_image:.3g}")


if __name__ == "__main__":
    main()
