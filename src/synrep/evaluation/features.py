"""Evaluation datasets and frozen features: the splits of the toy world, an ImageFolder tree or a
torchvision dataset (never downloaded); features extracted once per encoder and cached beside the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.fileio import atomic_path

SPLITS = ("train", "val", "test")


@dataclass
class EvalData:
    """Images (uint8 CHW tensors, via a dataset per split) and integer labels per target."""

    datasets: dict[str, torch.utils.data.Dataset]
    labels: dict[str, dict[str, np.ndarray]]  # target -> split -> labels
    class_names: dict[str, list[str]]  # target -> class names
    prompts: dict[str, list[list[str]]] = field(default_factory=dict)  # target -> per class prompts


class ArrayImages(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] -> uint8 CHW tensors."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)


class ImagesOnly(torch.utils.data.Dataset):
    """A (image, label) dataset as uint8 CHW tensors at the training size."""

    def __init__(self, dataset, size: int, indices: np.ndarray | None = None):
        from torchvision.transforms import v2

        self.dataset, self.indices = dataset, indices
        self.transform = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])

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


def _split_val(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(fraction * n)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_eval_data(cfg: DictConfig) -> EvalData:
    """The ``eval.dataset`` under ``eval.root``: ``toyworld`` (labelled by ``eval.targets``),
    ``imagefolder`` (``<root>/{train,val,test}/<class>/``) or a torchvision dataset class."""
    e, size = cfg.eval, cfg.train.image_size
    root = Path(e.root)
    if e.dataset == "toyworld":
        from synrep.data import toyworld

        splits = {s: toyworld.load_split(root, s) for s in SPLITS}
        names = toyworld.attribute_names(cfg)
        for i, target in enumerate(e.targets):
            if target not in names:
                raise ValueError(f"config key 'eval.targets[{i}]': {target!r} is not a toy world attribute "
                                 f"({sorted(names)})")
        return EvalData(
            datasets={s: ArrayImages(splits[s]["images"]) for s in SPLITS},
            labels={t: {s: splits[s][t] for s in SPLITS} for t in e.targets},
            class_names={t: names[t] for t in e.targets},
            prompts={t: toyworld.zero_shot_prompts(cfg, t) for t in e.targets if toyworld.zero_shot_prompts(cfg, t)},
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
        raw = {s: (parts[s], None) for s in parts}
    else:
        if not hasattr(torchvision.datasets, e.dataset):
            raise ValueError(f"config key 'eval.dataset': {e.dataset!r} is neither toyworld, imagefolder nor a "
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
    if "val" not in raw:  # hold out part of train for choosing the probe's learning rate
        train_idx, val_idx = _split_val(len(parts["train"]), e.val_fraction, seed=0)
        raw["train"], raw["val"] = (parts["train"], train_idx), (parts["train"], val_idx)
    if "test" not in raw:
        raw["test"] = raw["val"]
    labels = {}
    for split, (ds, idx) in raw.items():
        y = _labels_of(ds)
        labels[split] = y[idx] if idx is not None else y
    names = [str(c) for c in classes]
    return EvalData(
        datasets={s: ImagesOnly(ds, size, idx) for s, (ds, idx) in raw.items()},
        labels={"class": labels},
        class_names={"class": names},
        prompts={"class": [[f"a photo of a {c}.", f"a picture of a {c}."] for c in names]},
    )


@torch.no_grad()
def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], data: EvalData, cfg: DictConfig,
                     desc: str = "features") -> dict[str, np.ndarray]:
    """``encode`` takes normalised float images [B, 3, H, W] on the CPU (where evaluation loads the
    trained model); returns {split: float32 [N, d]}."""
    from torchvision.transforms import v2

    from synrep.learning.augment import MEAN, STD

    normalise = v2.Compose([v2.Resize(cfg.train.image_size, antialias=True), v2.CenterCrop(cfg.train.image_size),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    out = {}
    for split, dataset in data.datasets.items():
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False)
        chunks = [encode(normalise(batch)).float() for batch in
                  tqdm(loader, desc=f"{desc} {split}", leave=False, mininterval=5)]
        out[split] = torch.cat(chunks).numpy()
    return out


def cached_features(path: Path, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Features from ``path`` when they were made for ``key`` (the weights' fingerprint), else computed."""
    if path.exists():
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["key"]) == key:
                return {s: cached[s] for s in cached.files if s != "key"}
    features = compute()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, key=np.array(key), **features)
    return features
