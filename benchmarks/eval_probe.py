"""What the paper's evaluation costs, and what the ``baselines`` rule's SLURM resources come from.

    python benchmarks/eval_probe.py [--images 64] [--repeat 3]

Measured on this machine, per image and one core: the augmented probe's crop (decode an
ImageNet-sized JPEG, RandomResizedCrop 224 + flip) as the loader workers now cut it (uint8 out,
normalised on the device) and as they did before (float32 out, normalised in the worker), with the
bytes each ships; the probe heads' step per image on cached features (the paper's 10 learning
rates, 768 dims, 1,000 classes); the size and save time of a probe checkpoint (what a requeue
resumes from). Then the paper's evaluation (ImageNet: 1,281,167 train images, 90 epochs of crops,
50,000 + 10,000 centre crops) in CPU-core-hours of cropping, the memory of the cached features and
the checkpoint, and the hours of one baselines job (one GPU, ``--cpus`` workers) where the loader is
the limit. On a GPU it also measures the encoder's rate as evaluation runs it (the paper config's
ViT-B/16 from ``build_model``, uint8 batches normalised on the device, ``train.precision``
autocast, ``eval.batch_size``) and uses it; without one, ``--gpu-rate`` (images/s, default a
conservative A100 figure for ViT-B/16 fp16 inference) stands for it.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine  # benchmarks/machine.py

TRAIN, HELD_OUT, VAL, EPOCHS = 1_281_167, 10_000, 50_000, 90  # ImageNet-1k; eval.holdout; official probe
LRS, DIM, CLASSES, BATCH = 10, 768, 1000, 1024


def per_image(fn, items, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best


def encoder_rate(steps: int = 20) -> float:
    """Images/s of the paper config's encoder as ``extract_features`` runs it on this GPU."""
    from synrep.config import load_config
    from synrep.evaluation.features import normalise_transform
    from synrep.learning.trainer import autocast_dtype, build_model

    cfg = load_config(["experiment=paper_cc12m"])
    device = torch.device("cuda")
    model = build_model(cfg).eval().to(device, memory_format=torch.channels_last)
    normalise, amp = normalise_transform(cfg), autocast_dtype(cfg.train.precision, device)
    batch = torch.randint(0, 256, (cfg.eval.batch_size, 3, 224, 224), dtype=torch.uint8).pin_memory()

    def step():
        with torch.no_grad(), torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            return model.features(normalise(batch.to(device, non_blocking=True))).float().cpu()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=14, help="loader workers (train.workers of paper_cc12m)")
    parser.add_argument("--gpu-rate", type=float, default=2000.0, help="ViT-B/16 bf16 inference, images/s")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from PIL import Image
    from torchvision.transforms import v2

    from synrep.evaluation.linear_probe import ProbeCheckpoint, ProbeHeads
    from synrep.learning.augment import MEAN, STD

    rng = np.random.default_rng(0)
    # ImageNet's train JPEGs: about 400 x 350 px and 110 kB on average; smooth shapes plus grain
    # give files of that size at PIL's default quality
    blobs = []
    for _ in range(args.images):
        buffer = io.BytesIO()
        smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (25, 28, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC))
        grain = np.clip(smooth + rng.normal(0, 30, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(grain).save(buffer, format="JPEG")
        blobs.append(buffer.getvalue())

    def decode(blob):
        return v2.functional.to_image(Image.open(io.BytesIO(blob)).convert("RGB"))

    crop = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])
    before = v2.Compose([crop, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    rows = []
    # interleaved, best of --repeat rounds each: a shared machine's load falls on all three alike
    t_decode = t_now = t_before = float("inf")
    for _ in range(args.repeat):
        t_decode = min(t_decode, per_image(decode, blobs, 1))
        t_now = min(t_now, per_image(lambda b: crop(decode(b)), blobs, 1))
        t_before = min(t_before, per_image(lambda b: before(decode(b)), blobs, 1))
    rows.append(("decode 500x375 JPEG", t_decode * 1e3, "ms/img/core",
                 f"{np.mean([len(b) for b in blobs]) / 1e3:.0f} kB a file"))
    rows.append(("probe crop, uint8 out (now)", t_now * 1e3, "ms/img/core", f"{3 * 224 * 224 / 1e3:.0f} kB shipped"))
    rows.append(("probe crop + normalise, float32 out (before)", t_before * 1e3, "ms/img/core",
                 f"{4 * 3 * 224 * 224 / 1e3:.0f} kB shipped"))

    probe = ProbeHeads(DIM, CLASSES, [0.01] * LRS, 100, batchnorm=False)
    z, y = torch.randn(BATCH, DIM), torch.randint(0, CLASSES, (BATCH,))
    probe.step(z, y)
    start = time.perf_counter()
    for _ in range(3):
        probe.step(z, y)
    t_step = (time.perf_counter() - start) / 3 / BATCH
    rows.append(("probe heads' step (10 lrs, CPU, 1 thread)", t_step * 1e6, "us/img", "-"))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = ProbeCheckpoint(Path(tmp) / "probe.pt", "key")
        start = time.perf_counter()
        checkpoint.save({"epoch": 1, "probe": probe.state(), "torch_rng": torch.get_rng_state(), "generator": None})
        t_save = time.perf_counter() - start
        size = os.path.getsize(checkpoint.path)
    rows.append(("probe checkpoint save", t_save, "s", f"{size / 1e6:.0f} MB"))

    gpu_measured = None
    if torch.cuda.is_available():
        gpu_measured = encoder_rate()
        rows.append((f"ViT-B/16 evaluation forward on {torch.cuda.get_device_name()}", gpu_measured, "img/s", "-"))
        args.gpu_rate = gpu_measured

    crops = EPOCHS * (TRAIN - HELD_OUT)
    centre = HELD_OUT + VAL
    core_hours = (crops * t_now + centre * t_decode) / 3600
    loader_rate = args.cpus / t_now
    rate = min(loader_rate, args.gpu_rate)
    baseline_hours = (crops + centre) / rate / 3600
    features_gb = (TRAIN * DIM * 4) / 1e9
    print(f"# benchmarks/eval_probe.py, {machine()}, torch {torch.__version__}")
    print()
    print("| measurement | value | unit | note |")
    print("|---|---:|---|---|")
    for name, value, unit, note in rows:
        print(f"| {name} | {value:.2f} | {unit} | {note} |")
    print()
    print("| paper evaluation (ImageNet, official probe) | value |")
    print("|---|---:|")
    print(f"| crops over 90 epochs | {crops / 1e6:.1f} M |")
    print(f"| cropping, CPU core-hours | {core_hours:.0f} |")
    print(f"| loader rate with {args.cpus} workers | {loader_rate:.0f} img/s |")
    print(f"| GPU rate {'measured' if gpu_measured else 'assumed (--gpu-rate, no GPU here)'} | {args.gpu_rate:.0f} img/s |")
    print(f"| one baselines job, random-init probe (1 GPU, {args.cpus} workers) | {baseline_hours:.1f} h |")
    print(f"| the same on a 32-GPU run (sweep_run: every rank encodes) | {baseline_hours * 60 / 32:.0f} min |")
    print(f"| cached train features if the probe does not augment (raw pixels: 768 dims) | {features_gb:.1f} GB |")
    print(f"| probe checkpoint (heads + momentum) | {size / 1e6:.0f} MB, saved in {t_save:.2f} s |")


if __name__ == "__main__":
    main()
