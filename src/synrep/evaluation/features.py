"""Evaluation datasets and frozen features: the splits of the toy world, an ImageFolder tree or a
torchvision dataset (never downloaded); features extracted once per encoder and cached beside the run.

Three roles: ``train`` (the probe fits on it), ``val`` (selection: the probe's lr and epoch) and
``test`` (reported). Nothing is ever chosen on the reported split: the toy world and an ImageFolder
with {train, val, test} have all three; an ImageFolder with {train, val} (ImageNet) reports val and
selects on ``eval.holdout`` train images held out per class; a torchvision dataset reports its test
split and holds out from train likewise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig

from synrep.fileio import atomic_path, write_json
from synrep.settings import ConfigError, InputError
from synrep.tracking import progress as progress_bar

SPLITS = ("train", "val", "test")


@dataclass
class EvalData:
    """Images (uint8 CHW tensors after the evaluation transform, a dataset per split) and integer
    labels per target."""

    datasets: dict[str, torch.utils.data.Dataset]
    labels: dict[str, dict[str, np.ndarray]]  # target -> split -> labels
    class_names: dict[str, list[str]]  # target -> class names
    prompts: dict[str, list[list[str]]] = field(default_factory=dict)  # target -> per class prompts
    # uncropped training images, for a probe trained on augmented crops (eval.probe_augment)
    train_images: torch.utils.data.Dataset | None = None
    # the toy world's attributes of each test image and their value names (eval.groups); empty elsewhere
    test_attributes: dict[str, np.ndarray] = field(default_factory=dict)
    attribute_names: dict[str, list[str]] = field(default_factory=dict)


class ArrayImages(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] -> uint8 CHW tensors, through ``transform`` if given."""

    def __init__(self, images: np.ndarray, transform: Callable | None = None):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        return self.transform(image) if self.transform else image


class ImagesOnly(torch.utils.data.Dataset):
    """A (image, label) dataset as uint8 CHW tensors, through ``transform`` (e.g. the evaluation
    resize and centre crop)."""

    def __init__(self, dataset, transform: Callable | None = None, indices: np.ndarray | None = None):
        from torchvision.transforms import v2

        self.dataset, self.indices = dataset, indices
        self.transform = v2.Compose([v2.ToImage(), *([transform] if transform else [])])

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        j = int(self.indices[i]) if self.indices is not None else i
        return self.transform(self.dataset[j][0])


def _labels_of(dataset) -> np.ndarray:
    for attr in ("targets", "labels", "_labels"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)


def stratified_holdout(labels: np.ndarray, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices: ``holdout`` images (a count >= 1, or a fraction < 1) taken from
    every class in proportion to its size (largest remainders), seeded; both sorted."""
    n = len(labels)
    count = int(round(holdout * n)) if holdout < 1 else int(holdout)
    if not 0 < count < n:
        raise ConfigError(f"config key 'eval.holdout': {holdout:g} holds out {count} of {n} training images; "
                          "need at least 1 and fewer than all")
    classes, sizes = np.unique(labels, return_counts=True)
    share = sizes * count / n
    take = np.floor(share).astype(int)
    rest = count - take.sum()
    take[np.argsort(-(share - take), kind="stable")[:rest]] += 1
    if np.any(take >= sizes):
        bad = classes[np.argmax(take >= sizes)]
        raise ConfigError(f"config key 'eval.holdout': {holdout:g} would leave class {bad} no training image")
    rng = np.random.default_rng(seed)
    held = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)])
    held = np.sort(held)
    return np.setdiff1d(np.arange(n), held), held


def eval_transform(cfg: DictConfig):
    """Resize(image_size / crop_pct) + CenterCrop(image_size): the official Resize 256 / CenterCrop 224."""
    from torchvision.transforms import v2

    size = cfg.train.image_size
    return v2.Compose([v2.Resize(round(size / cfg.eval.crop_pct), antialias=True), v2.CenterCrop(size)])


WNID = re.compile(r"^n\d{8}$")


def wnid_names(classes: list[str]) -> list[str] | None:
    """Readable names for WordNet-id folders (n01440764): CLIP's ImageNet class names (open_clip)
    for ImageNet-1k's wnids (all 1000 or a subset such as ImageNet-100; timm's synset list gives the
    standard index order), else the first WordNet lemma (timm's ImageNet-22k table); None when the
    folders are not wnids."""
    if not classes or not all(WNID.match(c) for c in classes):
        return None
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from timm.data import ImageNetInfo

    index = {wnid: i for i, wnid in enumerate(ImageNetInfo("imagenet-1k").label_names())}
    if all(c in index for c in classes):
        return [IMAGENET_CLASSNAMES[index[c]] for c in classes]
    info = ImageNetInfo("imagenet-22k")
    known = set(info.label_names())
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise InputError(f"class folders {unknown[:3]} look like WordNet ids but are not ImageNet synsets: "
                         "name the classes with config key 'eval.class_names'")
    return [info.label_name_to_description(c).split(",")[0].strip() for c in classes]


def class_prompts(cfg: DictConfig, classes: list[str]) -> list[list[str]]:
    """CLIP's 80 ImageNet prompt templates (open_clip's OPENAI_IMAGENET_TEMPLATES, callables, applied
    as open_clip's zero-shot classifier does) around each class's name: ``eval.class_names`` (one
    per line, sorted-folder order), else ImageNet's names for wnid folders (``wnid_names``: sorted
    wnids are the standard index order), else the folder name with '_' as ' '. Never a wnid."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    if cfg.eval.class_names:
        path = Path(cfg.eval.class_names)
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) != len(classes):
            raise InputError(f"{path}: {len(names)} class names for {len(classes)} class folders "
                             "(config key 'eval.class_names')")
    else:
        names = wnid_names(classes) or [c.replace("_", " ") for c in classes]
    return [[template(name) for template in OPENAI_IMAGENET_TEMPLATES] for name in names]


def load_eval_data(cfg: DictConfig) -> EvalData:
    """The ``eval.dataset`` under ``eval.root``: ``toyworld`` (labelled by ``eval.targets``),
    ``imagefolder`` (``<root>/{train,val,test}/<class>/``) or a torchvision dataset class."""
    e = cfg.eval
    root = Path(e.root)
    if e.dataset == "toyworld":
        from synrep.data import toy_vocabulary, toyworld

        splits = {s: toyworld.load_split(root, s) for s in SPLITS}
        names = toy_vocabulary.attribute_names(cfg)
        for i, target in enumerate(e.targets):
            if target not in names:
                raise ConfigError(f"config key 'eval.targets[{i}]': {target!r} is not a toy world attribute "
                                  f"({sorted(names)})")
        return EvalData(
            train_images=ArrayImages(splits["train"]["images"]),
            datasets={s: ArrayImages(splits[s]["images"], eval_transform(cfg)) for s in SPLITS},
            labels={t: {s: splits[s][t] for s in SPLITS} for t in e.targets},
            class_names={t: names[t] for t in e.targets},
            prompts={t: toy_vocabulary.zero_shot_prompts(cfg, t) for t in e.targets if toy_vocabulary.zero_shot_prompts(cfg, t)},
            test_attributes={a: splits["test"][a] for a in names},
            attribute_names=names,
        )
    if not root.exists():
        raise FileNotFoundError(f"evaluation dataset {e.dataset!r} not found: looked for {root} (config key "
                                "'eval.root'); synrep never downloads datasets")
    import torchvision

    if e.dataset == "imagefolder":
        parts = {}
        for split in SPLITS:
            if (root / split).is_dir():
                parts[split] = torchvision.datasets.ImageFolder(str(root / split))
        if "train" not in parts or ("val" not in parts and "test" not in parts):
            raise FileNotFoundError(f"ImageFolder evaluation needs {root}/train and {root}/val or {root}/test "
                                    "(one sub-folder per class)")
        classes = parts["train"].classes
        if "test" not in parts:  # ImageNet: val is the reported split
            parts["test"] = parts.pop("val")
    else:
        if not hasattr(torchvision.datasets, e.dataset):
            raise ConfigError(f"config key 'eval.dataset': {e.dataset!r} is neither toyworld, imagefolder nor a "
                              "torchvision dataset class")
        cls = getattr(torchvision.datasets, e.dataset)
        try:
            train_set, test_set = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
        except RuntimeError as err:
            raise FileNotFoundError(f"torchvision dataset {e.dataset} not found under {root} "
                                    f"(config key 'eval.root'; download=False): {err}") from None
        parts = {"train": train_set, "test": test_set}
        classes = list(getattr(train_set, "classes", range(int(_labels_of(train_set).max()) + 1)))
    raw = {s: (parts[s], None) for s in parts}
    if "val" not in parts:  # select on held-out train images, never on the reported split
        kept, held = stratified_holdout(_labels_of(parts["train"]), e.holdout, seed=0)
        raw["train"], raw["val"] = (parts["train"], kept), (parts["train"], held)
    labels = {}
    for split, (ds, idx) in raw.items():
        y = _labels_of(ds)
        labels[split] = y[idx] if idx is not None else y
    names = [str(c) for c in classes]
    transform = eval_transform(cfg)
    return EvalData(
        datasets={s: ImagesOnly(ds, transform, idx) for s, (ds, idx) in raw.items()},
        labels={"class": labels},
        class_names={"class": names},
        prompts={"class": class_prompts(cfg, names)},
        train_images=ImagesOnly(raw["train"][0], None, raw["train"][1]),
    )


def normalise_transform(cfg: DictConfig):
    from torchvision.transforms import v2

    from synrep.learning.augment import MEAN, STD

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def rank_rows(n: int, rank: int = 0, world_size: int = 1) -> range:
    """The rows of a split that one rank encodes: a contiguous block (``np.array_split``'s sizes), so
    that the blocks of ranks 0, 1, .. concatenate to the split in order."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


@torch.no_grad()
def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], data: EvalData, cfg: DictConfig,
                     desc: str = "features", splits: tuple[str, ...] = SPLITS, device: str | torch.device = "cpu",
                     amp_dtype: torch.dtype | None = None, rank: int = 0, world_size: int = 1,
                     workers: int = 0) -> dict[str, np.ndarray]:
    """``encode`` takes normalised float images [B, 3, H, W] on ``device`` (where the model is);
    returns {split: float32 [N, d]}, or with ``world_size`` > 1 this rank's block of each split
    (``rank_rows``). Images go through the evaluation transform (``eval.crop_pct``, in the datasets,
    in ``workers`` loader processes), travel as uint8 and are normalised on the device."""
    device = torch.device(device)
    normalise = normalise_transform(cfg)
    out = {}
    for split in splits:
        dataset = data.datasets[split]
        rows = rank_rows(len(dataset), rank, world_size)
        if len(rows) != len(dataset):
            dataset = torch.utils.data.Subset(dataset, rows)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False,
                                             num_workers=workers, pin_memory=device.type == "cuda")
        chunks = []
        for batch in progress_bar(loader, desc=f"{desc} {split}", leave=False, disable=rank != 0):
            batch = batch.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                chunks.append(encode(normalise(batch)).float().cpu())
        out[split] = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
    return out


def _shard_name(split: str, rank: int, world_size: int, tag: str) -> str:
    return f"{split}.{rank:04d}-of-{world_size:04d}.{tag}.npy"


def load_features(folder: Path, key: str | None = None) -> dict[str, np.ndarray] | None:
    """The features a finished ``cached_features`` folder holds ({split: [N, d]}), or None when it is
    unfinished or (with ``key``) made for another key."""
    import json

    manifest = Path(folder) / "manifest.json"
    if not manifest.exists():
        return None
    made = json.loads(manifest.read_text())
    if key is not None and made["key"] != key:
        return None
    out = {}
    for split, shards in made["shards"].items():
        parts = [np.load(Path(folder) / name, allow_pickle=False) for name in shards]
        out[split] = np.concatenate([p for p in parts if len(p)]) if any(len(p) for p in parts) else parts[0]
    return out


def cached_features(folder: Path, key: str, splits: tuple[str, ...], compute: Callable[[str], np.ndarray],
                    rank: int = 0, world_size: int = 1) -> dict[str, np.ndarray] | None:
    """Features from ``folder`` when they were made for ``key`` (what they depend on: the weights,
    the data, the crop, the precision), else computed and stored. Every rank computes and writes
    only its own block of each split (``compute(split)``, one ``.npy`` a split and rank, atomically),
    so a rank holds one block, never the data set, and a requeued extraction keeps the blocks
    already written; rank 0 then writes ``manifest.json`` (the finished marker), removes blocks of
    other keys and reads the whole. Returns the features on rank 0 and None on the other ranks."""
    import hashlib

    from synrep.learning import distributed

    folder = Path(folder)
    found = load_features(folder, key) if rank == 0 else None
    if found is not None and world_size == 1:
        return found
    if world_size > 1:  # every rank learns whether rank 0 found them
        done = [found is not None]
        torch.distributed.broadcast_object_list(done, src=0)
        if done[0]:
            return found
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        shard = folder / _shard_name(split, rank, world_size, tag)
        if shard.exists():
            continue
        features = np.ascontiguousarray(compute(split), dtype=np.float32)
        with atomic_path(shard) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, features)
    distributed.barrier()
    if rank != 0:
        return None
    shards = {s: [_shard_name(s, r, world_size, tag) for r in range(world_size)] for s in splits}
    write_json(folder / "manifest.json", {"key": key, "world_size": world_size, "shards": shards})
    keep = {name for names in shards.values() for name in names}
    for stale in folder.glob("*.npy"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    return load_features(folder, key)
