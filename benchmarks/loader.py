"""Does the training data path keep up with the encoder? Images/s that the loader delivers against
images/s that a training step consumes, for the toy default and for a 224 px ViT-B/16-shaped setting.

    python benchmarks/loader.py [--steps 20] [--vit-workers N] [key=value ...]

Toy: the default config's StableRep run on source w2 (reading the shards that `snakemake --cores 2`
made; synthetic shards are written when they are missing), with ``train.workers`` loader processes.
ViT-B/16: synthetic 256 px PNG shards (6 images a caption, as the official runs) in a scratch folder,
the official augmentation at 224 px, 6 images a row, ``--vit-workers`` processes (default: every
CPU), against ``vit_base_patch16_224``'s training step (forward, multi-positive loss, backward,
AdamW) on this machine. Each line prints the ratio; the goal is >= 2x.

Then the 224 px augmentation per image on one core, side by side: the official transform
(torchvision's PIL transforms, PIL's GaussianBlur, ToTensor + Normalize in the worker), ours all on
PIL (uint8 out), and ours as training runs it: crop + flip in the worker, colour, blur and
normalisation batched on the device (timed here on this CPU, a batch of 64, per image). Decoding
the 256 px PNG is a separate row: both paths pay it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine  # benchmarks/machine.py


def loader_rate(cfg, dataset, rows: int, workers: int, batches: int, batch_augment=None) -> float:
    """Images/s out of the training data path (``trainer.data_loader``'s settings, then the batched
    augmentation when the config uses it), after one warm-up pass (which fills a decoded-image
    cache, as the first of a run's many passes does); passes repeat until ``batches`` are timed."""
    import itertools

    from synrep.data import stream

    def batches_of(pass_index: int):
        loader = torch.utils.data.DataLoader(dataset, batch_size=rows, shuffle=True, collate_fn=stream.collate_groups,
                                             num_workers=workers, drop_last=True,
                                             generator=torch.Generator().manual_seed(pass_index))
        for batch in loader:
            images = batch["images"]
            yield batch_augment(images) if batch_augment is not None else images

    for _ in batches_of(0):  # warm-up pass
        pass
    start, images, timed = time.perf_counter(), 0, 0
    for pass_index in itertools.count(1):
        for out in batches_of(pass_index):
            images += len(out)
            timed += 1
            if timed == batches:
                return images / (time.perf_counter() - start)
    raise AssertionError("unreachable")


def step_rate(cfg, images_per_step: int, steps: int) -> float:
    """Images/s consumed by forward + loss + backward + AdamW at ``images_per_step`` crops."""
    from synrep.learning import methods
    from synrep.learning.step import forward_loss, optimizer_step
    from synrep.learning.trainer import build_model, build_optimizer

    t = cfg.train
    k = methods.get(t.method).crops_per_row(t.m)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rows = images_per_step // k
    x = torch.randn(rows * k, 3, t.image_size, t.image_size)
    groups = torch.arange(rows).repeat_interleave(k)
    captions = ["a caption"] * rows
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss, _ = forward_loss(cfg, model, x, groups, captions)
        optimizer_step(loss, optimizer, scaler)
    return rows * k * steps / (time.perf_counter() - start)


def synthetic_shards(folder: Path, captions: int, images: int, size: int, per_shard: int = 32) -> list[str]:
    """PNG shards in the project's format with smooth random images (PNG sizes like photos')."""
    from synrep.data.shards import sample_key, write_shard

    rng = np.random.default_rng(0)
    paths = []
    for start in range(0, captions, per_shard):
        samples = []
        for c in range(start, min(captions, start + per_shard)):
            small = rng.integers(0, 256, (images, size // 8, size // 8, 3), dtype=np.uint8)
            big = small.repeat(8, 1).repeat(8, 2)
            noise = rng.integers(0, 24, big.shape, dtype=np.uint8)
            samples.append({"key": sample_key(c), "images": list(big + noise),
                            "record": {"caption": f"caption {c}", "caption_id": c}})
        path = folder / f"shard-{start // per_shard:06d}.tar"
        write_shard(path, samples, "png")
        paths.append(str(path))
    return paths


def dataset_for(cfg, urls: list[str]):
    """The run's dataset as ``trainer.training_data`` builds it: per-image transforms in the loader,
    or none there and the batched augmentation after it; decoded images cached when configured."""
    from synrep.data import stream
    from synrep.learning import augment, methods

    t = cfg.train
    spec = methods.get(t.method).sample_spec(t.l, t.m)
    transform = None if augment.augments_batches(cfg) else augment.train_transform(cfg)
    return stream.GroupDataset(urls, spec, transform, seed=0, cache_decoded=t.cache_decoded)


def augmentation_rows(images: int = 400) -> list[tuple[str, float]]:
    """ms an image on one core: the official PIL transform against ours (see the module doc)."""
    import io
    import random

    import torchvision.transforms as T
    from PIL import Image, ImageFilter

    from synrep.learning import augment

    torch.set_num_threads(1)

    class OfficialBlur:  # the official GaussianBlur: PIL's, sigma uniform in [0.1, 2.0]
        def __call__(self, x):
            return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))

    official = T.Compose([
        T.RandomResizedCrop(224, scale=(0.08, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([OfficialBlur()], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(augment.MEAN, augment.STD),
    ])
    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(16):
        small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        big = small.repeat(8, 0).repeat(8, 1) + rng.integers(0, 24, (256, 256, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    decoded = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    pil = augment.ImageAugment(224, on_device=False)
    worker = augment.ImageAugment(224)
    device = augment.DeviceAugment(224)

    def per_image(fn) -> float:
        fn(0)
        start = time.perf_counter()
        for i in range(images):
            fn(i)
        return (time.perf_counter() - start) / images * 1e3

    rows = [("decode a 256 px PNG (both)", per_image(lambda i: Image.open(io.BytesIO(pngs[i % 16])).convert("RGB")))]
    rows.append(("official: torchvision PIL transforms + ToTensor + Normalize", per_image(
        lambda i: official(decoded[i % 16]))))
    rows.append(("ours, all on PIL (uint8 out)", per_image(lambda i: pil(decoded[i % 16], random.Random(i)))))
    worker_ms = per_image(lambda i: worker(decoded[i % 16], random.Random(i)))
    rows.append(("ours in the worker: crop + flip (uint8 + draws out)", worker_ms))
    out = [worker(decoded[i % 16], random.Random(i)) for i in range(64)]
    crops, draws = torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])
    device(crops, draws)
    start = time.perf_counter()
    for _ in range(3):
        device(crops, draws)
    rows.append(("ours on the device (here: this CPU, 1 thread), batch of 64", (time.perf_counter() - start) / 3 / 64 * 1e3))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vit-workers", type=int, default=os.cpu_count())
    parser.add_argument("--augment-only", action="store_true", help="only the augmentation table")
    args = parser.parse_args()
    if args.augment_only:
        aug_table()
        return

    from synrep.config import load_config
    from synrep.data import stream

    rows = []
    cfg = load_config(["train.method=stablerep", "train.data=w2", *args.overrides])
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix="synrep-loader-") as tmp:
        try:
            urls = stream.shard_urls(cfg, "w2")
            where = "the default run's w2 shards"
        except FileNotFoundError:
            urls = synthetic_shards(Path(tmp), 256, cfg.train.l, cfg.toyworld.image_size)
            where = "synthetic 16 px shards"
        from synrep.learning import augment

        dataset = dataset_for(cfg, urls)
        k = cfg.train.m
        per_step = cfg.train.batch_images // k
        path = "decoded once, crops + flips a batch at a time" if augment.augments_batches(cfg) else "per image"
        rows.append(("toy default (" + where + f", StableRep m={k}, {cfg.train.workers} workers, {path})",
                     loader_rate(cfg, dataset, per_step, cfg.train.workers, args.steps, augment.batch_augment(cfg)),
                     step_rate(cfg, cfg.train.batch_images, args.steps)))

        vit = load_config(["train.method=stablerep", "train.encoder=vit_base_patch16_224", "train.image_size=224",
                           "train.l=6", "train.m=6", "train.batch_images=24", "train.head_hidden=4096",
                           "train.head_out=256", "train.augment.crop_scale=[0.08,1.0]",
                           "train.augment.color_jitter_p=0.8", "train.augment.grayscale_p=0.2",
                           "train.augment.blur_p=0.5", f"threads={cfg.threads}"])
        urls = synthetic_shards(Path(tmp) / "vit", 64, 6, 256)
        dataset = dataset_for(vit, urls)
        rows.append((f"ViT-B/16 224 px (256 px PNGs, official augmentation, {args.vit_workers} workers)",
                     loader_rate(vit, dataset, 4, args.vit_workers, max(4, args.steps // 4)),
                     step_rate(vit, 24, max(2, args.steps // 10))))

    print(f"\nTraining data path against the encoder ({machine()}, torch {torch.__version__}, "
          f"{cfg.threads} torch threads)\n")
    print("| setting | loader images/s | encoder images/s | loader / encoder |")
    print("| --- | ---: | ---: | ---: |")
    for name, loader, encoder in rows:
        print(f"| {name} | {loader:,.0f} | {encoder:,.1f} | {loader / encoder:.1f}x |")
    aug_table()


def aug_table() -> None:
    rows = augmentation_rows()
    official = rows[1][1]
    print(f"\n224 px augmentation per image, one core ({machine()}, torch {torch.__version__})\n")
    print("| path | ms / image | official / this |")
    print("| --- | ---: | ---: |")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | {official / ms:.1f}x |")


if __name__ == "__main__":
    main()
