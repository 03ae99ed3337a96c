"""DreamBooth's own measures, on the toy world, with and without prior preservation (the paper's
ablation), for the base generator and each fine-tuned model (``dreambooth.quality.models``).

Per model and sampling seed, four prompt sets of ``quality.images`` samples each:

- ``instance``: "<instance_prompt>" ("a sks ring"). *Subject fidelity*: the mean cosine similarity
  of the samples' embeddings to held-out real renders of the subject (the paper's CLIP-I), under
  the toy CLIP's image tower, and under a StableRep encoder when ``quality.encoder`` names a run;
  *subject margin*: that similarity minus the one to the subject's near misses (ordinary rings,
  rings without the notch, rings in one tone): positive when samples are nearer the subject than
  near misses are (a fine-grained probe, as the paper prefers DINO to CLIP for it). *Subject
  diversity* (the paper's DIV: how different samples of one subject under one prompt are): mean
  pairwise RMS pixel distance and mean pairwise toy-CLIP distance (1 - cos) among these samples;
  what prior preservation claims to keep, where the class-prompt diversity below measures drift.
- ``background`` / ``size``: "<instance_prompt> on a dark|light background", "<instance_prompt>,
  small|big". *Prompt fidelity*: the judge (the attribute classifier) reads the asked background
  and size.
- ``class``: "<class_prompt>" ("a ring"). *Language drift*: the judge's ring accuracy on them, and
  their similarity to the subject (does "a ring" now draw the subject?); *class diversity*: mean
  pairwise RMS pixel distance (sample_quality.diversity) and mean pairwise CLIP distance (1 - cos).

A ``real`` row scores real renders in place of samples (other held-out subject renders, the subject
on the asked background and size, ordinary rings): the ceiling of each measure. Cells are the
mean ± 95% t-interval over ``quality.seeds`` (tables.mean_ci, as inpaint_quality).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig, OmegaConf

from synrep.data import toy_subject, toy_vocabulary
from synrep.diffusion.sampling import sample_images
from synrep.evaluation import study
from synrep.evaluation.attribute_classifier import predict
from synrep.evaluation.sample_quality import diversity
from synrep.generation.source_images import sampling_of
from synrep.images import image_grid
from synrep.pixels import unit_range
from synrep.settings import ConfigError, to_dict
from synrep.tables import markdown_table, mean_ci_table

GROUPS = ("instance", "background", "size", "class")
SIZE_PROMPT_WORDS = ("small", "big")  # toy_vocabulary.SIZE_WORDS of small and large


def prompt_set(group: str, instance_prompt: str, class_prompt: str, n: int) -> tuple[list[str], np.ndarray | None]:
    """The n prompts of a group and the attribute value each asks for (background / size groups;
    half one value, half the other), else None."""
    if group == "instance":
        return [instance_prompt] * n, None
    if group == "class":
        return [class_prompt] * n, None
    wanted = np.arange(n) * 2 // n  # first half 0, second half 1
    if group == "background":
        words = [toy_vocabulary.BACKGROUND_WORDS[b][0] for b in toy_vocabulary.BACKGROUNDS]
        return [toy_vocabulary.with_articles(f"{instance_prompt} on a {words[w]} background") for w in wanted], wanted
    if group == "size":
        return [f"{instance_prompt}, {SIZE_PROMPT_WORDS[w]}" for w in wanted], wanted
    raise ValueError(f"unknown prompt group {group!r}")


def noise_seeds(quality_seed: int, seed: int, group: str, n: int) -> list[int]:
    """Noise seeds of a group's samples: the same for every model, so that models are compared on
    equal noise."""
    return [int(s) for s in np.random.SeedSequence([quality_seed, seed, GROUPS.index(group)]).generate_state(n)]


def real_group(cfg: DictConfig, group: str, n: int, subject_seed: int, seed: int) -> np.ndarray:
    """Real renders standing in for a group's samples (the ceiling row)."""
    key = [int(subject_seed), 2, int(seed), GROUPS.index(group)]
    if group == "instance":
        return toy_subject.render_subject(cfg, n, key)[0]
    if group == "class":
        return toy_subject.render_subject(cfg, n, key, variant="plain")[0]
    _, wanted = prompt_set(group, "", "", n)
    parts = []
    for value in (0, 1):
        count = int((wanted == value).sum())
        kwargs = {"background": value} if group == "background" else {"size": value}
        parts.append(toy_subject.render_subject(cfg, count, [*key, value], **kwargs)[0])
    return np.concatenate(parts)


class Embedders:
    """Unit-norm image embeddings of uint8 images: the toy CLIP's image tower, and a StableRep run's
    backbone when one is given."""

    def __init__(self, clip_model: str, encoder: str | None = None):
        from synrep.diffusion.clip_guidance import load_guide

        self.clip = load_guide(str(clip_model))
        self.encoder = None
        if encoder:
            if not (Path(encoder) / "config.yaml").exists():
                raise FileNotFoundError(f"config key 'dreambooth.quality.encoder': {Path(encoder) / 'config.yaml'} not "
                                        "found (a train run folder: model.pt and config.yaml)")
            self.encoder = RunEncoder(encoder)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        x = unit_range(images)
        out = {"clip": self.clip.image_embeddings(x)}
        if self.encoder is not None:
            out["encoder"] = self.encoder.embed(x)
        return out


class RunEncoder:
    """A trained run's backbone (its folder: model.pt and config.yaml) as unit-norm image features,
    with the training normalisation."""

    def __init__(self, folder: str | Path):
        from synrep.learning.augment import MEAN, STD
        from synrep.learning.trainer import load_trained

        folder = Path(folder)
        self.model = load_trained(OmegaConf.load(folder / "config.yaml"), folder)
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Float images [B, 3, H, W] in [0, 1] -> unit-norm features."""
        return torch.nn.functional.normalize(self.model.features((x - self.mean) / self.std), dim=-1)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images [B, H, W, 3] -> unit-norm features."""
        return self.embed(unit_range(images))


def mean_pairwise_distance(e: torch.Tensor) -> float:
    """Mean of 1 - cos over distinct pairs of unit-norm embeddings."""
    sim = e @ e.T
    n = len(e)
    return float(1 - (sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def score(images: dict[str, np.ndarray], wanted: dict[str, np.ndarray], classifier, embed: Embedders,
          references: dict[str, dict[str, torch.Tensor]], ring: int) -> dict[str, float]:
    """The measures of one model and seed from its four groups' images."""
    row: dict[str, float] = {}
    inst = embed(images["instance"])
    for name, e in inst.items():
        subject = float((e @ references["subject"][name].T).mean())
        near = float((e @ references["near_miss"][name].T).mean())
        row[f"fidelity_{name}"] = subject
        row[f"margin_{name}"] = subject - near
    row["instance_diversity"] = diversity([images["instance"]])
    row["instance_diversity_clip"] = mean_pairwise_distance(inst["clip"])
    for group, attr in (("background", "background"), ("size", "size")):
        row[f"prompt_{attr}"] = float((predict(classifier, images[group])[attr] == wanted[group]).mean())
    cls = images["class"]
    row["class_ring_accuracy"] = float((predict(classifier, cls)["shape"] == ring).mean())
    cls_e = embed(cls)["clip"]
    row["class_subject_similarity"] = float((cls_e @ references["subject"]["clip"].T).mean())
    row["class_diversity"] = diversity([cls])
    row["class_diversity_clip"] = mean_pairwise_distance(cls_e)
    return row


def fine_tune_settings(folder: str | Path) -> dict:
    """A fine-tuned model's own DreamBooth settings (its saved config.yaml)."""
    path = Path(folder) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"config key 'dreambooth.quality.models': {path} not found (train it with "
                                "`python -m synrep train_dreambooth dreambooth.output_dir=...`)")
    d = OmegaConf.load(path).dreambooth
    return {"folder": str(folder), "instance_prompt": str(d.instance_prompt), "class_prompt": str(d.class_prompt),
            "with_prior_preservation": bool(d.with_prior_preservation), "subject_seed": int(d.subject_seed),
            "max_train_steps": int(d.max_train_steps), "train_seed": int(d.seed)}


def measure(cfg: DictConfig, pipes: dict[str, tuple[object, dict]], classifier, embed: Embedders,
            real: bool = True) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """One row per (model, seed) (and per seed of the ``real`` row): ``pipes`` maps a label to
    (pipeline, its settings: instance_prompt, class_prompt, with_prior_preservation). Returns the
    rows and, per label, the first seed's first 8 images of each group (a grid)."""
    from synrep.recipes.dreambooth import reference_seed, sampling_settings

    d, q = cfg.dreambooth, cfg.dreambooth.quality
    n = int(q.images)
    refs = toy_subject.render_subject(cfg, q.reference_images, reference_seed(d.subject_seed, q.seed))[0]
    near, _, _ = toy_subject.render_other_rings(cfg, q.reference_images, [*reference_seed(d.subject_seed, q.seed), 1])
    references = {"subject": embed(refs), "near_miss": embed(near)}
    ring = list(cfg.toyworld.shapes).index("ring")
    settings = {**sampling_settings(d, to_dict(cfg.generation)), "batch_size": to_dict(cfg.generation)["batch_size"]}
    rows, examples = [], {}
    labels = (["real"] if real else []) + list(pipes)
    for label, seed in itertools.product(labels, [int(s) for s in q.seeds]):
        if label == "real":
            info = {"with_prior_preservation": None}
            images = {g: real_group(cfg, g, n, d.subject_seed, seed) for g in GROUPS}
            wanted = {g: prompt_set(g, "", "", n)[1] for g in ("background", "size")}
        else:
            pipe, info = pipes[label]
            images, wanted = {}, {}
            for group in GROUPS:
                prompts, wanted[group] = prompt_set(group, info["instance_prompt"], info["class_prompt"], n)
                images[group] = sample_images(pipe, prompts, noise_seeds(q.seed, seed, group, n), settings["w"],
                                              sampling_of(settings))
        rows.append({"model": label, "prior": info["with_prior_preservation"], "seed": seed,
                     **score(images, wanted, classifier, embed, references, ring)})
        if label not in examples:
            examples[label] = np.concatenate([images[g][:8] for g in GROUPS])
    return pl.DataFrame(rows), examples


def summary(rows: pl.DataFrame, examples: dict[str, np.ndarray], infos: list[dict], origin: str
            ) -> tuple[dict[str, tuple[str, study.Content]], list[tuple[dict[str, float], None]]]:
    """The files (per-run csv, the summary table as markdown and json, a grid per model: rows
    instance, background, size, class) and each model's MLflow metrics, the mean over seeds."""
    table = mean_ci_table(rows, ["model", "prior"])
    files = {"runs": ("dreambooth_runs.csv", rows), "table": ("dreambooth_quality.md", markdown_table(table)),
             "json": ("dreambooth_quality.json", {"rows": rows.to_dicts(), "summary": table.to_dicts(),
                                                  "models": infos, "classifier": origin}),
             **{f"grid_{label}": (f"samples_{label}.png", image_grid(images, rows=len(GROUPS), scale=4))
                for label, images in examples.items()}}
    means = rows.group_by("model").agg(pl.exclude("seed", "prior").mean())
    metrics = [({f"{row['model']}.{k}": v for k, v in row.items() if k != "model" and v is not None}, None)
               for row in means.iter_rows(named=True)]
    return files, metrics


def run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep dreambooth_quality``: the base generator and ``dreambooth.quality.models``."""
    from synrep.diffusion.pipelines import load_pipeline

    d, q = cfg.dreambooth, cfg.dreambooth.quality
    infos = [fine_tune_settings(m) for m in q.models]
    for info in infos:
        if info["subject_seed"] != d.subject_seed:
            raise ConfigError(f"config key 'dreambooth.subject_seed': {d.subject_seed}, but {info['folder']} learnt the "
                              f"subject of seed {info['subject_seed']} (its held-out renders would differ)")
    classifier, _, origin = study.load_judge(cfg)
    embed = Embedders(q.clip_model, q.encoder)
    g = cfg.generation
    sampler = d.sampler or g.sampler
    pipes = {"base": (load_pipeline(d.generator, sampler, g.dtype, g.device),
                      {"instance_prompt": str(d.instance_prompt), "class_prompt": str(d.class_prompt),
                       "with_prior_preservation": None})}
    for info in infos:
        label = "prior" if info["with_prior_preservation"] else "no_prior"
        if label in pipes:
            label = Path(info["folder"]).name
        pipes[label] = (load_pipeline(info["folder"], sampler, g.dtype, g.device), info)
    rows, examples = measure(cfg, pipes, classifier, embed)
    files, metrics = summary(rows, examples, infos, origin)
    return study.report(cfg, Path(q.output_dir), files, "dreambooth_quality", ("dreambooth",), metrics)
