"""NADA's adaptive layer choice on a UNet (``ZSSGAN.determine_opt_layers``): the units of the toy
generator's UNet, how a few SGD steps of the global CLIP loss score them (by their weights' movement
or, as NADA, by their own conditioning codes'), and freezing all but the chosen ones. Used by
``recipes/nada.py``; why each score, in its module doc."""

from __future__ import annotations

import copy

import torch
from torch import nn

from synrep.recipes.nada_loss import global_loss, weighted_sum
from synrep.recipes.settings import LAYER_UNITS
from synrep.settings import ConfigError


def layer_units(unet: nn.Module, unit: str = "module") -> dict[str, nn.Module]:
    """The UNet's trainable units by name (the ``unet.named_modules`` name): ``block``: each of
    down_blocks, mid_block, up_blocks; ``module``: each resnet, attention, down- and upsampler in
    them. Everything else (conv_in, conv_out, norms, time and caption embeddings) is never trained."""
    blocks = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)}
    blocks["mid_block"] = unet.mid_block
    blocks.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)})
    if unit == "block":
        return blocks
    if unit != "module":
        raise ConfigError(f"config key 'nada.layer_unit': {unit!r} is not one of {list(LAYER_UNITS)}")
    out = {}
    for name, block in blocks.items():
        for part in ("resnets", "attentions", "downsamplers", "upsamplers"):
            for i, module in enumerate(getattr(block, part, None) or []):
                out[f"{name}.{part}.{i}"] = module
    return out


def select_layers(unet: nn.Module, units: list[str], k: int, sample, guides: list[tuple], iters: int,
                  lr: float, unit: str = "module", score: str = "weights") -> tuple[list[str], dict[str, float]]:
    """(the k chosen unit names, best first; every unit's score): NADA's ``determine_opt_layers`` on
    a UNet, SGD steps of the global loss toward the target text (summed over ``guides``: (CLIP,
    weight, its unit target text embedding)), scored by ``weight_scores`` or ``code_scores``.
    ``sample(unet)``: images in [0, 1] from that step's noises and captions."""
    if score == "codes":
        all_units = layer_units(unet, unit)
        scores = code_scores(unet, {name: all_units[name] for name in units}, sample, guides, iters, lr)
    else:
        scores = weight_scores(unet, units, unit, sample, guides, iters, lr)
    return sorted(units, key=lambda name: -scores[name])[:k], scores


def guided_global_loss(images: torch.Tensor, guides: list[tuple]) -> torch.Tensor:
    """The layer choice's loss: the global CLIP loss toward the target text, summed over ``guides``."""
    return weighted_sum([(weight, global_loss(guide.image_embeddings(images), target))
                         for guide, weight, target in guides])


def weight_scores(unet: nn.Module, units: list[str], unit: str, sample, guides: list[tuple], iters: int,
                  lr: float) -> dict[str, float]:
    """A throw-away copy of ``unet`` takes ``iters`` SGD steps on all the named ``units``' weights
    (``layer_units(unet, unit)`` names); a unit's score is its relative movement ‖Δθ‖ / ‖θ‖."""
    trial = copy.deepcopy(unet)
    trial_units = layer_units(trial, unit)
    set_trainable(trial, trial_units, units)
    params = [p for name in units for p in trial_units[name].parameters()]
    before = {name: [p.detach().clone() for p in trial_units[name].parameters()] for name in units}
    optimizer = torch.optim.SGD(params, lr=lr)
    for _ in range(iters):
        loss = guided_global_loss(sample(trial), guides)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    scores = {}
    for name in units:
        moved = sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(trial_units[name].parameters(), before[name]))
        size = sum(float(b.pow(2).sum()) for b in before[name])
        scores[name] = (moved / max(size, 1e-12)) ** 0.5
    return scores


def conditioned(module: nn.Module) -> str | None:
    """Which conditioning input a unit reads: resnet (the timestep-and-caption embedding), attention
    (the caption states) or None (a resampler)."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return "resnet" if isinstance(module, ResnetBlock2D) else "attention" if isinstance(module, Transformer2DModel) else None


def code_scores(unet: nn.Module, units: dict[str, nn.Module], sample, guides: list[tuple], iters: int,
                lr: float) -> dict[str, float]:
    """NADA's own layer score on a UNet. NADA gives every StyleGAN layer its own copy of w (W+),
    moves the copies ``iters`` SGD steps of the global loss and scores a layer by the mean |Δw| of
    its copy. A UNet's counterpart of a layer's w: the input a unit is conditioned by, the same for
    every unit (a resnet's timestep-and-caption embedding, which it projects to a per-channel shift as
    a StyleGAN layer's affine maps w to its style; an attention's caption token states). Here each
    unit gets its own copy, added at each call of the chain, and is scored by the copy's mean |Δ|;
    ``unet``'s weights do not change. Resamplers read no conditioning: they score 0 (NADA never
    scores its toRGB layers either)."""
    codes: dict[str, torch.Tensor] = {}

    def own(name: str, value: torch.Tensor) -> torch.Tensor:
        if name not in codes:  # the copy's change from the shared input, zero at first
            codes[name] = torch.zeros_like(value, requires_grad=True)
        return value + codes[name]

    def resnet_hook(name):
        return lambda module, args, kwargs: ((args[0], own(name, args[1]), *args[2:]), kwargs)

    def attention_hook(name):
        return lambda module, args, kwargs: (args, {**kwargs, "encoder_hidden_states":
                                                    own(name, kwargs["encoder_hidden_states"])})

    hook_of = {"resnet": resnet_hook, "attention": attention_hook}
    hooks = [module.register_forward_pre_hook(hook_of[kind](name), with_kwargs=True)
             for name, module in units.items() if (kind := conditioned(module))]
    try:
        for _ in range(iters):
            grads = torch.autograd.grad(guided_global_loss(sample(unet), guides), list(codes.values()))
            with torch.no_grad():
                for code, grad in zip(codes.values(), grads):
                    code -= lr * grad
    finally:
        for hook in hooks:
            hook.remove()
    return {name: float(codes[name].detach().abs().mean()) if name in codes else 0.0 for name in units}


def set_trainable(unet: nn.Module, units: dict[str, nn.Module], chosen: list[str]) -> None:
    """Freeze every weight of ``unet`` but those of the ``chosen`` units."""
    unet.requires_grad_(False)
    for name in chosen:
        units[name].requires_grad_(True)


def trained_state(unet: nn.Module, units: dict[str, nn.Module], names: list[str]) -> dict[str, torch.Tensor]:
    """The weights of the named units, keyed as in ``unet.state_dict()``."""
    out = {}
    for name in names:
        for key, value in units[name].state_dict().items():
            out[f"{name}.{key}"] = value.detach().clone().contiguous()
    return out
