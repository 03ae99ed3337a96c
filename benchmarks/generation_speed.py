"""Seconds per generated image with the configured pipeline, for ``python -m synrep plan``.

    python benchmarks/generation_speed.py [key=value ...]      e.g. experiment=paper_cc12m

Generates ``--images`` images (after one warm-up batch) with the config's model, sampler, steps,
resolution, dtype and device, at the first guidance scale, and prints a table and the value to
pass as ``plan.seconds_per_image``.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()

    from synrep.config import load_config
    from synrep.diffusion.pipelines import load_pipeline
    from synrep.diffusion.sampling import sample_images
    from synrep.generation.source_images import sampling_of
    from synrep.generation.sources import source_spec

    cfg = load_config(args.overrides)
    g = cfg.generation
    w = source_spec(cfg, cfg.train.data)["guidance"]["w"] if cfg.train.data != "real" else 2.0
    w = float(w[0] if isinstance(w, list) else w)
    torch.set_num_threads(cfg.threads)
    pipe = load_pipeline(g.model, g.sampler, g.dtype, g.device)
    prompts = ["a red circle on a dark background", "a photo of a small blue cross"] * (args.images // 2 + 1)
    batch = min(g.batch_size, args.images)
    sampling = sampling_of(g)
    sample_images(pipe, prompts[:batch], list(range(batch)), w, sampling)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    done = 0
    while done < args.images:
        k = min(batch, args.images - done)
        sample_images(pipe, prompts[done:done + k], list(range(done, done + k)), w, sampling)
        done += k
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and g.device != "cpu" else f"cpu x{cfg.threads}"
    print("| model | sampler | steps | batch | device | images | s/image |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {g.model} | {g.sampler} | {g.steps} | {batch} | {device} | {args.images} | {seconds / args.images:.4f} |")
    print(f"\npython -m synrep plan {' '.join(args.overrides)} plan.seconds_per_image={seconds / args.images:.4f}")


if __name__ == "__main__":
    main()
