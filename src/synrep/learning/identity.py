"""What a trained model depends on, and how two such identities differ (no torch import here: the
Snakefile hashes every run's identity when it builds the DAG)."""

from __future__ import annotations

from omegaconf import DictConfig

from synrep.generation.sources import refresh_reading, source_spec
from synrep.settings import to_dict
from synrep.tracking import flatten


def training_identity(cfg: DictConfig) -> dict:
    """What a trained model depends on: ``train.*`` (but where and how often it is written), the
    captions, and the resolved spec of the source it reads."""
    t = to_dict(cfg.train)
    t.pop("output_dir", None)
    t.pop("checkpoint_seconds", None)  # how often it is saved on the way, not what it becomes
    identity = {"train": t, "source": source_spec(cfg, t["data"]) if t["data"] != "real" else None,
                "captions": to_dict(cfg.captions)}
    reading = refresh_reading(cfg, t["data"])
    if reading is not None:  # which round a pass reads: not in the source's spec, it changes no image
        identity["refresh_every"] = reading[0]
    return identity


def identity_diff(stored: dict, wanted: dict) -> list[str]:
    """Dotted keys whose values differ, as ``key: stored -> wanted``, in the order of ``wanted``."""
    a, b = flatten("", stored), flatten("", wanted)
    keys = list(b) + [k for k in a if k not in b]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
