"""GPU readiness: seconds per image of SD v1.5-shaped generation and step time / MFU of ViT-B/16
StableRep training, on CUDA (fp16 generation, bf16 autocast training, PyTorch SDPA attention) or,
as a smoke run of the same code, on the CPU. The numbers feed ``python -m synrep plan``.

    python benchmarks/gpu.py                      # CUDA when visible, else a small CPU smoke run
    python benchmarks/gpu.py --peak-tflops 989    # MFU against your GPU's dense bf16 peak

Generation: ``random_sd_pipeline("sd15")`` (SD v1.5's UNet, VAE and text-encoder sizes with random
weights, built here: no download) through ``synrep.generation.sampling.sample_images`` at 512 px,
50 DDIM steps, w = 7.5, as the paper's recipes; on the CPU the quarter-width layout at 128 px, 2
steps. Training: ``vit_base_patch16_224`` with the paper's 4096-4096-256 MLP head (StableRep,
m = 6, 6 crops a caption) at ``--vit-batch`` crops a step; FLOPs counted by
``torch.utils.flop_counter`` on one step; MFU = counted FLOPs / step time / peak.
"""

from __future__ import annotations

import argparse
import time

import torch

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


def generation(device: torch.device, images: int) -> dict:
    from synrep.generation.random_sd import random_sd_pipeline
    from synrep.generation.sampling import sample_images

    cuda = device.type == "cuda"
    shape = "sd15" if cuda else "small"
    pipe = random_sd_pipeline(shape).to(device, torch.float16 if cuda else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    settings = {"steps": 50 if cuda else 2, "eta": 0.0, "guidance_rescale": 0.0, "batch_size": 8 if cuda else 2,
                "resolution": None, "save_size": None}
    prompts = [f"a photo of thing number {i}" for i in range(images)]
    sample_images(pipe, prompts[: settings["batch_size"]], list(range(settings["batch_size"])), 7.5, settings)
    sync(device)
    start = time.perf_counter()
    sample_images(pipe, prompts, list(range(images)), 7.5, settings)
    sync(device)
    seconds = (time.perf_counter() - start) / images
    size = pipe.vae.config.sample_size
    return {"what": f"{shape} pipeline, {size} px, DDIM {settings['steps']} steps, w 7.5, batch "
                    f"{settings['batch_size']}, {'fp16' if cuda else 'fp32'}", "seconds_per_image": seconds}


def training(device: torch.device, batch: int, steps: int, peak: float | None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from synrep.config import load_config
    from synrep.learning.step import forward_loss, optimizer_step
    from synrep.learning.trainer import build_model, build_optimizer

    cfg = load_config(["train.encoder=vit_base_patch16_224", "train.image_size=224", "train.method=stablerep",
                       "train.l=6", "train.m=6", f"train.batch_images={batch}", "train.head_hidden=4096",
                       "train.head_out=256"])
    cuda = device.type == "cuda"
    amp = torch.bfloat16 if cuda else None
    model = build_model(cfg).to(device).train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    rows = batch // 6
    x = torch.randn(rows * 6, 3, 224, 224, device=device)
    groups = torch.arange(rows, device=device).repeat_interleave(6)

    def step():
        loss, _ = forward_loss(cfg, model, x, groups, [], amp)
        optimizer_step(loss, optimizer, scaler)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    achieved = flops / seconds / 1e12
    return {"what": f"ViT-B/16 StableRep, {rows * 6} crops a step, {'bf16 autocast' if cuda else 'fp32'}",
            "step_seconds": seconds, "tflops": achieved, "mfu": achieved / peak if peak else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="images timed (default 32 on CUDA, 4 on CPU)")
    parser.add_argument("--vit-batch", type=int, default=None, help="crops a step (default 258 on CUDA, 12 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="training steps timed (default 10 on CUDA, 2 on CPU)")
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
    gen = generation(device, args.images or (32 if cuda else 4))
    train = training(device, args.vit_batch or (258 if cuda else 12), args.steps or (10 if cuda else 2), peak)

    print(f"\nGPU readiness on {name}, torch {torch.__version__}, SDPA "
          f"{'on' if hasattr(torch.nn.functional, 'scaled_dot_product_attention') else 'off'}\n")
    print("| benchmark | setting | result |")
    print("| --- | --- | ---: |")
    print(f"| generation | {gen['what']} | {gen['seconds_per_image']:.3f} s / image |")
    mfu = f", MFU {train['mfu']:.0%}" if train["mfu"] is not None else ""
    print(f"| training | {train['what']} | {train['step_seconds']:.3f} s / step, {train['tflops']:.1f} TFLOP/s{mfu} |")
    print(f"\nfor python -m synrep plan: plan.seconds_per_image={gen['seconds_per_image']:.3f} "
          f"(per GPU; the recipe's own batch and steps may differ)")


if __name__ == "__main__":
    main()
