"""GPU readiness of the paper recipe (``experiment=paper_cc12m``): its generation and its fed
training step, through the project's own code paths, on CUDA or, as a smoke run of the same code,
on the CPU. The numbers feed ``python -m synrep plan``.

    python benchmarks/gpu.py                      # CUDA when visible, else a small CPU smoke run
    python benchmarks/gpu.py --peak-tflops 989    # MFU against your GPU's dense bf16/fp16 peak
    python benchmarks/gpu.py --workers 14         # loader processes (the recipe's train.workers)

Generation: source ``w2`` of the recipe as ``generate`` samples it (``source_spec`` + ``sample_images``:
DDIM 50 steps, eta 0, 512 px, w = 2, ``generation.batch_size`` = 32 images a call, l = 10 images of
a caption sharing its text encoding, fp16), on ``random_sd_pipeline("sd15")`` (SD v1.5's UNet, VAE
and text-encoder sizes with random weights, built here: no download); the resize to 256 px and the
PNG/JPEG encoding are timed apart, as the shard job runs them off the sampling loop. On the CPU:
the quarter-width layout at 128 px, 2 steps, l = 2.

Training: the recipe's ViT-B/16 StableRep step (m = 6, the 4096-4096-256 head, fp16 autocast with a
grad scaler, AdamW) at one GPU's share of the batch (43 captions x 6 crops = 258), fed by the run's
own loader (``trainer.data_loader``: persistent workers, pinned uint8 batches, crops and flips in
the workers) from 256 px PNG shards of 10 images a caption, colour, blur and normalisation on the
GPU (``augment.DeviceAugment``). Three rows: the loader alone (once its prefetched batches are used
up), the step alone (one batch reused) and the fed step; the fed rate is what a GPU of the real run gets. FLOPs are counted by
``torch.utils.flop_counter`` on one step; MFU = counted FLOPs / step time / peak.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import synthetic_shards  # noqa: E402  (the loader benchmark's PNG shards)
from machine import machine  # noqa: E402

# dense bf16/fp16 tensor-core peaks (TFLOP/s), by a substring of the device name
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
               "V100": 125.0, "RTX 4090": 165.0, "A6000": 155.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe(device: torch.device, overrides: list[str]):
    from synrep.config import load_config

    return load_config([f"train.device={device.type}", f"generation.device={device.type}", *overrides],
                       experiment="paper_cc12m")


def generation(device: torch.device, captions: int) -> dict:
    from PIL import Image

    from synrep.diffusion.random_sd import random_sd_pipeline
    from synrep.diffusion.sampling import sample_images
    from synrep.generation.source_images import sampling_of
    from synrep.generation.sources import source_spec

    cuda = device.type == "cuda"
    small = [] if cuda else ["generation.resolution=128", "generation.steps=2", "generation.batch_size=4",
                             "generation.images_per_caption=2", "generation.dtype=float32"]
    cfg = recipe(device, small)
    spec = source_spec(cfg, "w2")
    pipe = random_sd_pipeline("sd15" if cuda else "small").to(device, getattr(torch, cfg.generation.dtype))
    pipe.set_progress_bar_config(disable=True)
    sampling = sampling_of(dict(spec, save_size=None))  # the shard job resizes in its encoding threads
    l = spec["l"]
    prompts = [f"a photo of thing number {i}" for i in range(captions)]
    seeds = list(range(captions * l))
    first = max(1, spec["batch_size"] // l)
    sample_images(pipe, prompts[:first], seeds[:first * l], spec["guidance"]["w"], sampling, images_per_prompt=l)
    sync(device)
    start = time.perf_counter()
    images = sample_images(pipe, prompts, seeds, spec["guidance"]["w"], sampling, images_per_prompt=l)
    sync(device)
    seconds = (time.perf_counter() - start) / len(images)

    def encode(fmt: str) -> tuple[float, float]:
        start, size = time.perf_counter(), 0
        for image in images[:16]:
            small = Image.fromarray(image).resize((spec["save_size"],) * 2, Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            small.save(buffer, **({"format": "PNG"} if fmt == "png" else {"format": "JPEG", "quality": 95}))
            size += buffer.tell()
        n = min(16, len(images))
        return (time.perf_counter() - start) / n, size / n

    return {"what": f"{'sd15' if cuda else 'small'} random pipeline, {spec['resolution'] or pipe.vae.config.sample_size} px, "
                    f"{spec['sampler']} {spec['steps']} steps, w {spec['guidance']['w']}, l {l}, batch {spec['batch_size']}, "
                    f"{cfg.generation.dtype}", "seconds_per_image": seconds,
            "encode": {fmt: encode(fmt) for fmt in ("png", "jpeg")}, "save_size": spec["save_size"]}


def training(device: torch.device, rows: int, steps: int, workers: int, peak: float | None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from synrep.data import stream
    from synrep.data.shards import members_path
    from synrep.learning import augment, methods
    from synrep.learning.distributed import DistInfo
    from synrep.learning.step import forward_loss, optimizer_step
    from synrep.learning.trainer import autocast_dtype, build_model, build_optimizer, data_loader, training_length

    # l = 6: the shards hold the 6 images a caption that m = 6 draws (the recipe's other 4 are never read)
    cfg = recipe(device, [f"train.batch_images={rows * 6}", f"train.workers={workers}", "train.l=6"])
    t = cfg.train
    amp = autocast_dtype(t.precision, device) if device.type == "cuda" else None
    model = build_model(cfg).to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    device_augment = augment.DeviceAugment(t.image_size).to(device)
    # the loader is timed once what its workers prefetched is used up: one pass must hold that,
    # the timed batches and the steps
    prefetched = workers * 4
    batches_needed = prefetched + 2 * steps + 4
    with tempfile.TemporaryDirectory(prefix="synrep-gpu-") as tmp:
        (one,) = synthetic_shards(Path(tmp), 64, t.l, 256, per_shard=64)
        urls = [one]
        for k in range(1, -(-rows * batches_needed // 64)):  # the same shard again, hard-linked: no writing
            url = Path(tmp) / f"copy-{k:06d}.tar"
            os.link(one, url)
            os.link(members_path(one), members_path(url))
            urls.append(str(url))
        spec = methods.get(t.method).sample_spec(t.l, t.m)
        dataset = stream.GroupDataset(urls, spec, augment.train_transform(cfg), seed=t.seed,
                                      cache_decoded=t.cache_decoded)
        length = training_length(cfg, len(dataset))
        loader = data_loader(cfg, dataset, length, DistInfo(), device)
        loader.sampler.set_epoch(0)
        dataset.set_epoch(0)
        feed = iter(loader)

        def step(batch) -> None:
            images = batch["images"].to(device, non_blocking=True, memory_format=torch.channels_last)
            images = device_augment(images, batch["draws"].to(device, non_blocking=True))
            loss, _ = forward_loss(cfg, model, images, batch["group_ids"].to(device), batch["captions"], amp)
            optimizer_step(loss, optimizer, scaler)

        for _ in range(prefetched + 1):
            batch = next(feed)
        start = time.perf_counter()
        for _ in range(steps):
            next(feed)
        loader_alone = (time.perf_counter() - start) / steps
        counter = FlopCounterMode(display=False)
        with counter:
            step(batch)
        flops = counter.get_total_flops()
        step(batch)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(batch)
        sync(device)
        alone = (time.perf_counter() - start) / steps
        start = time.perf_counter()
        for _ in range(steps):
            step(next(feed))
        sync(device)
        fed = (time.perf_counter() - start) / steps
        del feed, loader
    crops = rows * methods.get(t.method).crops_per_row(t.m)
    return {"what": f"{t.encoder} {t.method}, {crops} crops a step (one GPU's share), "
                    f"{t.precision if amp else 'fp32'}, {workers} loader workers",
            "crops": crops, "alone": alone, "loader": loader_alone, "fed": fed, "tflops": flops / alone / 1e12,
            "mfu": flops / alone / 1e12 / peak if peak else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=None, help="captions generated (default 8 on CUDA, 2 on CPU)")
    parser.add_argument("--rows", type=int, default=None, help="captions a step (default 43 on CUDA, 2 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="training steps timed (default 10 on CUDA, 2 on CPU)")
    parser.add_argument("--workers", type=int, default=None, help="loader processes (default: every CPU, at most 14)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU (smoke run of the GPU code path; not a GPU figure)"
    peak = peak_tflops(device, args.peak_tflops)
    workers = args.workers or min(14, os.cpu_count() or 1)
    gen = generation(device, args.captions or (8 if cuda else 2))
    train = training(device, args.rows or (43 if cuda else 2), args.steps or (10 if cuda else 2), workers, peak)

    print(f"\nThe paper recipe on {name}, torch {torch.__version__}; {machine()}\n")
    print("| benchmark | setting | result |")
    print("| --- | --- | ---: |")
    print(f"| generation | {gen['what']} | {gen['seconds_per_image']:.3f} s / image |")
    for fmt, (seconds, size) in gen["encode"].items():
        print(f"| encoding (CPU, one thread) | resize to {gen['save_size']} px + {fmt.upper()} | "
              f"{seconds * 1e3:.1f} ms / image, {size / 1e3:.0f} kB |")
    mfu = f", MFU {train['mfu']:.0%}" if train["mfu"] is not None else ""
    print(f"| training: step alone | {train['what']} | {train['alone']:.3f} s / step, "
          f"{train['crops'] / train['alone']:,.0f} crops/s, {train['tflops']:.1f} TFLOP/s{mfu} |")
    print(f"| training: loader alone | the run's loader, 256 px PNG shards | {train['loader']:.3f} s / batch, "
          f"{train['crops'] / train['loader']:,.0f} crops/s |")
    print(f"| training: fed step | loader + step | {train['fed']:.3f} s / step, {train['crops'] / train['fed']:,.0f} crops/s "
          f"({train['alone'] / train['fed']:.0%} of the step alone) |")
    print(f"\nfor python -m synrep plan: plan.seconds_per_image={gen['seconds_per_image']:.3f} "
          f"plan.seconds_per_train_step={train['fed']:.3f} (one GPU's share; on N GPUs the step time holds while "
          f"the loader keeps up)")


if __name__ == "__main__":
    main()
