"""Frozen-feature evaluation: linear probe, few-shot, zero-shot, and two no-training baselines.

- Features are extracted once per encoder and cached beside the run (``features.npz``).
- Linear probe (papers.md): optional BatchNorm without affine in front of a linear head, SGD with
  momentum 0.9, no weight decay, cosine schedule; one head per learning rate, trained together on
  the same batches. The learning rate is chosen on the validation split and the chosen head is
  reported on the test split (the official code selects and reports on the same split; we don't).
- Few-shot: N-way K-shot episodes on the test split, nearest-prototype classifier on l2-normalised
  features; mean accuracy and its 95% confidence interval.
- Zero-shot (encoders with a text tower): cosine similarity to prompt embeddings averaged per class.
- Baselines that need no training: a randomly initialised encoder of the same architecture, and
  raw pixels.

Datasets: the toy world's real splits labelled by attribute (``eval.dataset=toyworld``), an
ImageFolder tree ``<root>/{train,val,test}/<class>/``, or a torchvision dataset class under
``root`` with ``download=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from synrep.config import run_dir, save_resolved
from synrep.fileio import atomic_path, write_json

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


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], data: EvalData, cfg: DictConfig,
                     device: torch.device | str = "cpu", desc: str = "features") -> dict[str, np.ndarray]:
    """``encode`` takes normalised float images [B, 3, H, W]; returns {split: float32 [N, d]}."""
    from torchvision.transforms import v2

    from synrep.learning.augment import MEAN, STD

    normalise = v2.Compose([v2.Resize(cfg.train.image_size, antialias=True), v2.CenterCrop(cfg.train.image_size),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    out = {}
    for split, dataset in data.datasets.items():
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False)
        chunks = [encode(normalise(batch).to(device)).float().cpu() for batch in
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


# --------------------------------------------------------------------------------------------
# Linear probe, few-shot, zero-shot
# --------------------------------------------------------------------------------------------


def linear_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], n_classes: int,
                 lrs: list[float], epochs: int, batch_size: int, batchnorm: bool, seed: int = 0) -> dict:
    """Train one linear head per learning rate at once; choose on val, report on test."""
    torch.manual_seed(seed)
    x = {s: torch.from_numpy(features[s]).float() for s in SPLITS}
    y = {s: torch.from_numpy(labels[s]).long() for s in SPLITS}
    dim = x["train"].shape[1]
    norm = nn.BatchNorm1d(dim, affine=False) if batchnorm else nn.Identity()
    heads = nn.ModuleList(nn.Linear(dim, n_classes) for _ in lrs)
    optimizer = torch.optim.SGD([{"params": h.parameters(), "lr": lr} for h, lr in zip(heads, lrs)],
                                momentum=0.9, weight_decay=0.0)
    n = len(x["train"])
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        norm.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            z = norm(x["train"][idx])
            loss = sum(loss_fn(head(z), y["train"][idx]) for head in heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    norm.eval()
    with torch.no_grad():
        acc = {s: [float((head(norm(x[s])).argmax(1) == y[s]).float().mean()) for head in heads] for s in SPLITS}
    best = int(np.argmax(acc["val"]))
    return {"test": acc["test"][best], "val": acc["val"][best], "train": acc["train"][best], "lr": lrs[best],
            "val_by_lr": dict(zip(map(str, lrs), acc["val"]))}


def few_shot(features: np.ndarray, labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
             seed: int = 0) -> dict:
    """N-way K-shot episodes with a nearest-prototype classifier (cosine); mean and 95% CI."""
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= shots + queries]
    ways = min(ways, len(classes))
    if ways < 2:
        raise ValueError(f"few-shot needs 2 classes with {shots + queries} images each; found {len(classes)}")
    z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    rng = np.random.default_rng(seed)
    accuracies = np.empty(episodes)
    for e in range(episodes):
        chosen = rng.choice(classes, size=ways, replace=False)
        picks = [rng.choice(by_class[c], size=shots + queries, replace=False) for c in chosen]
        support = np.stack([z[p[:shots]] for p in picks])  # [ways, shots, d]
        query = np.concatenate([z[p[shots:]] for p in picks])  # [ways*queries, d]
        truth = np.repeat(np.arange(ways), queries)
        prototypes = support.mean(axis=1)
        prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
        accuracies[e] = ((query @ prototypes.T).argmax(1) == truth).mean()
    return {"mean": float(accuracies.mean()),
            "ci95": float(1.96 * accuracies.std(ddof=1) / math.sqrt(episodes)) if episodes > 1 else 0.0,
            "ways": int(ways), "shots": int(shots), "queries": int(queries), "episodes": int(episodes)}


@torch.no_grad()
def zero_shot(model, cfg: DictConfig, image_features: np.ndarray, labels: np.ndarray,
              prompts: list[list[str]]) -> float:
    """Accuracy of the class whose averaged prompt embedding is nearest the image embedding."""
    from synrep.learning.trainer import tokenize

    model.eval()
    class_embeddings = []
    for class_prompts in prompts:
        emb = nn.functional.normalize(model.embed_text(tokenize(cfg, class_prompts)), dim=1).mean(0)
        class_embeddings.append(nn.functional.normalize(emb, dim=0))
    text = torch.stack(class_embeddings)
    img = nn.functional.normalize(model.embed_image(torch.from_numpy(image_features)), dim=1)
    return float(((img @ text.T).argmax(1).numpy() == labels).mean())


def evaluate_features(features: dict[str, np.ndarray], data: EvalData, cfg: DictConfig, seed: int = 0,
                      model=None) -> dict:
    """Every evaluation of one set of features; ``model`` (with a text tower) adds zero-shot."""
    e = cfg.eval
    metrics: dict = {"linear_probe": {}, "few_shot": {}, "zero_shot": {}}
    for target in data.labels:
        labels = data.labels[target]
        metrics["linear_probe"][target] = linear_probe(
            features, labels, len(data.class_names[target]), list(e.probe_lrs), e.probe_epochs,
            e.probe_batch_size, e.probe_batchnorm, seed=seed)
    primary = next(iter(data.labels))
    metrics["few_shot"][primary] = few_shot(features["test"], data.labels[primary]["test"], e.fewshot_ways,
                                            e.fewshot_shots, e.fewshot_queries, e.fewshot_episodes, seed=seed)
    if model is not None and getattr(model, "has_text", False) and e.zero_shot:
        for target, prompts in data.prompts.items():
            metrics["zero_shot"][target] = zero_shot(model, cfg, features["test"], data.labels[target]["test"], prompts)
    return metrics


def flat_metrics(metrics: dict) -> dict[str, float]:
    """{"probe_shape": .., "fewshot_shape": .., "fewshot_shape_ci95": .., "zeroshot_shape": ..}"""
    flat = {}
    for target, r in metrics["linear_probe"].items():
        flat[f"probe_{target}"] = r["test"]
        flat[f"probe_{target}_val"] = r["val"]
    for target, r in metrics["few_shot"].items():
        flat[f"fewshot_{target}"] = r["mean"]
        flat[f"fewshot_{target}_ci95"] = r["ci95"]
    for target, acc in metrics["zero_shot"].items():
        flat[f"zeroshot_{target}"] = acc
    return flat


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def evaluate_run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict:
    """Evaluate the trained encoder in a run folder; writes ``eval.json`` there."""
    from synrep.learning.trainer import load_trained

    out = Path(output_dir or cfg.train.output_dir)
    torch.set_num_threads(cfg.threads)
    model = load_trained(cfg, out)
    data = load_eval_data(cfg)
    features = cached_features(out / "features.npz", _fingerprint(out / "model.pt"),
                               lambda: extract_features(model.features, data, cfg, desc=out.name))
    metrics = evaluate_features(features, data, cfg, seed=cfg.train.seed, model=model)
    write_json(out / "eval.json", metrics)
    return metrics


def baselines(cfg: DictConfig, seed: int, data: EvalData | None = None) -> dict[str, dict]:
    """Random-init encoder (train.encoder, seeded) and raw pixels, evaluated like trained runs."""
    from synrep.learning.trainer import build_model

    data = data or load_eval_data(cfg)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    random_features = extract_features(model.features, data, cfg, desc=f"random init s{seed}")
    pixel_features = extract_features(lambda x: x.flatten(1), data, cfg, desc="raw pixels")
    return {
        "random_init": evaluate_features(random_features, data, cfg, seed=seed),
        "raw_pixels": evaluate_features(pixel_features, data, cfg, seed=seed),
    }


def baselines_run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep baselines``: both baselines for every sweep seed."""
    import mlflow

    from synrep.tracking import mlflow_run

    torch.set_num_threads(cfg.threads)
    out = run_dir(cfg, "baselines")
    data = load_eval_data(cfg)
    rows = []
    with mlflow_run(cfg, "baselines", sections=("eval",), run_name="baselines"):
        for seed in cfg.sweep.seeds:
            for name, metrics in baselines(cfg, seed, data).items():
                flat = flat_metrics(metrics)
                rows.append({"baseline": name, "seed": int(seed), "encoder": cfg.train.encoder, **flat,
                             "details": metrics})
                mlflow.log_metrics({f"{name}.{k}": v for k, v in flat.items()}, step=int(seed))
    save_resolved(cfg, out)
    path = write_json(out / "metrics.json", {"baselines": rows})
    return {"metrics": path}


def run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep evaluate``: the run in ``train.output_dir``."""
    from synrep.tracking import mlflow_run

    with mlflow_run(cfg, "evaluate", sections=("eval",), run_name=f"eval {Path(cfg.train.output_dir).name}"):
        import mlflow

        metrics = evaluate_run(cfg)
        mlflow.log_metrics(flat_metrics(metrics))
    return {"eval": Path(cfg.train.output_dir) / "eval.json"}
