"""Config sections of evaluation: frozen-feature evaluation (``eval``) and the generator
measurements (``sample_quality``, ``inpaint_quality``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig

from synrep.data.settings import TOY_ATTRIBUTES
from synrep.generation.settings import check_data_source
from synrep.settings import ConfigError, section_check, setting


@dataclass
class EvalConfig:
    """Frozen-feature evaluation: linear probe, few-shot and zero-shot."""

    dataset: str = setting(
        "toyworld", "toyworld: the embedded world's real splits; imagefolder: <root>/{train,val,test}/<class>/*; a "
        "torchvision dataset class name (e.g. CIFAR10) under root with download=False")
    root: str = setting("${paths.data_dir}/toyworld", "Where the evaluation data set is")
    targets: list[str] = setting(["shape", "size"], "Toy world labels to evaluate; the first is the headline number")
    batch_size: int = setting(512, "Images per forward pass of the frozen encoder", gt=0)
    holdout: float = setting(
        10000, "Selection split where the data set has no split of its own beside the reported one (ImageNet {train, "
        "val}: val is reported): train images held out, stratified by class; >= 1 a count (ImageNet: 10,000, ~10 a "
        "class), < 1 a fraction of train", gt=0)
    probe_lrs: list[float] = setting(
        [0.01, 0.03, 0.1, 0.3, 1.0], "Linear probe (the official main_linear.py): SGD momentum 0.9, no weight decay, "
        "cosine; every lr trained at once; the lr (and with probe_eval_every, the epoch) chosen on the selection split")
    probe_epochs: int = setting(30, "Epochs of the linear probe", gt=0)
    probe_batch_size: int = setting(256, "Images per step of the linear probe")
    probe_batchnorm: bool = setting(True, "BatchNorm without affine (eps 1e-6) in front of the heads: the official "
                                    "--use_bn")
    probe_eval_every: Optional[int] = setting(
        None, "Evaluate every N epochs and choose (lr, epoch) on the selection split (official: 10); null: the lr at "
        "the last epoch", gt=0)
    probe_augment: bool = setting(
        False, "Train the probe on RandomResizedCrop + flip through the frozen encoder each epoch (official); false: "
        "on cached centre-crop features")
    crop_pct: float = setting(
        1.0, "Evaluation transform: Resize(image_size / crop_pct) + CenterCrop(image_size) (official 0.875)",
        gt=0, le=1, note="the centre crop's share of the resized side")
    class_names: Optional[str] = setting(
        None, "Zero-shot class names on an ImageFolder: a text file, one per class in folder order (null: ImageNet's "
        "names for wnid folders, else the folder names)")
    fewshot_classifier: str = setting(
        "logistic", "Few-shot classifier: logistic regression on l2-normalised features, as StableRep (after Tian et "
        "al. 2020), or the nearest class mean", choices=("logistic", "prototype"))
    fewshot_episodes: int = setting(600, "Few-shot episodes", gt=0)
    fewshot_ways: int = setting(5, "Classes per episode", gt=0)
    fewshot_shots: int = setting(5, "Training images per class and episode", gt=0)
    fewshot_queries: int = setting(15, "Test images per class and episode", gt=0)
    zero_shot: bool = setting(True, "Zero-shot classification (models with a text tower)")
    raw_pixels_size: Optional[int] = setting(
        16, "The raw-pixel baseline pools images to at most this side first (224 px ImageNet would be a 150,528-dim x "
        "1.28M matrix; 16 px gives 768 dims); null leaves the baseline out", gt=0)
    groups: list[list[str]] = setting(
        [], "Worst-group accuracy of the first target's probe (toyworld only): its test predictions split by each "
        "grouping of toy world attributes, e.g. [[shape, background], [shape, colour]]; per grouping the worst "
        "group's accuracy, the mean over groups and a table of every group (eval.json); [] (off): no new metric")
    group_min_images: int = setting(
        5, "Groups with fewer test images than this are listed with their count but left out of the worst and the "
        "mean (a handful of images says little)", gt=0)


@section_check(EvalConfig)
def check_eval_groups(e: DictConfig, key: str, cfg: DictConfig) -> None:
    for i, grouping in enumerate(e.groups):
        if e.dataset != "toyworld":
            raise ConfigError(f"config key '{key}.groups[{i}]': groups are toy world attributes; "
                              f"eval.dataset is {e.dataset!r}")
        if not grouping:
            raise ConfigError(f"config key '{key}.groups[{i}]': an empty grouping (name one or more attributes)")
        for j, name in enumerate(grouping):
            if name not in TOY_ATTRIBUTES:
                raise ConfigError(f"config key '{key}.groups[{i}][{j}]': {name!r} is not a toy world attribute "
                                  f"({list(TOY_ATTRIBUTES)})")
            if name in grouping[:j]:
                raise ConfigError(f"config key '{key}.groups[{i}][{j}]': {name!r} is listed twice")


@dataclass
class SampleQualityConfig:
    """Caption-match accuracy and diversity of a generator, measured by an attribute classifier."""

    guidance_scales: list[float] = setting([1.0, 2.0, 4.0, 8.0], "The guidance scales w measured")
    captions: int = setting(32, "Captions measured", gt=0)
    images_per_caption: int = setting(4, "Images generated per caption at each setting", gt=0)
    classifier_epochs: int = setting(12, "Training epochs of the judge")
    classifier: Optional[str] = setting(
        "models/attribute_classifier", "The judge: loaded from this folder when it was trained on this world with "
        "these epochs and seed (models/ ships the default world's), else trained anew "
        "(evaluation/attribute_classifier.py)")
    clip_scales: list[float] = setting(
        [], "GLIDE's CLIP guidance rows: one per scale s, at CFG scale clip_w (1: CLIP guidance alone), guided by "
        "generation.clip_model; every row is scored by that CLIP when it exists")
    clip_w: float = setting(1.0, "CFG scale of the CLIP guidance rows")
    cutouts: int = setting(0, "Random cut-outs the guiding CLIP scores (0: the whole image)")
    clip_min_alpha_bars: list[float] = setting(
        [1.0e-3], "The CLIP rows' guidance.min_alpha_bar, one set of rows each (e.g. [0, 1e-3]: without and with the "
        "skip)", ge=0, lt=1)
    heldout_clip: Optional[str] = setting(
        None, "A second CLIP (another training seed) that scores every row and guides none: GLIDE's test of whether "
        "CLIP guidance raises its own CLIP's score more than what a held-out judge sees")
    heldout_clip_seed: int = setting(1, "toy_clip.seed of the held-out CLIP, when Snakemake trains it")
    noised_clip: Optional[str] = setting(
        "models/toy_noised_clip", "GLIDE's own form: rows guided by a noised CLIP on x_t (toy_noised_clip), one per "
        "scale in noised_clip_scales, at clip_w")
    noised_clip_scales: list[float] = setting([], "The noised CLIP rows' scales s")
    sources: list[str] = setting(
        ["clip30", "inpaint", "unclip", "variation"],
        "Sources judged by source_quality (so generated) although no run of the sweep trains on them: the default "
        "run's small previews of each generation mode (their rows of the generator-family table)")
    seed: int = setting(1234, "Seed of the measurement")
    enabled: bool = setting(True, "Part of `snakemake`'s default target (toy world only: the classifier reads toy "
                            "attributes)")


@section_check(SampleQualityConfig)
def check_judged_sources(sq: DictConfig, key: str, cfg: DictConfig) -> None:
    for i, name in enumerate(sq.sources):
        check_data_source(cfg, name, f"{key}.sources[{i}]")
        if name == "real":
            raise ConfigError(f"config key '{key}.sources[{i}]': 'real' is not a synthetic source")


@dataclass
class InpaintQualityConfig:
    """GLIDE's inpainting measured by the judge (evaluation/inpaint_quality.py): edit accuracy,
    kept attributes and PSNR of the kept region, per model, edit and w, over sampling seeds."""

    models: list[str] = setting(["models/toy_inpaint", "models/toy_generator"],
                                "An inpainting model, and a text-to-image one (it inpaints by replacement)")
    edits: list[str] = setting(["background", "colour"], "What each edit changes", choices=("background", "colour"))
    guidance_scales: list[float] = setting([1.0, 2.0, 4.0], "The guidance scales w measured")
    images: int = setting(64, "Real test images edited per setting", gt=0)
    seeds: list[int] = setting([0, 1, 2], "Sampling seeds: the intervals")
    dilate: int = setting(1, "Pixels the object's mask grows by")
    seed: int = setting(1234, "Seed of the measurement")
    enabled: bool = setting(False, "Part of `snakemake`'s default target (toy world only)")
