"""scripts/nada_checks.py's pixel reading (docs/nada.md quotes it), against how the toy world draws
its backgrounds: photos dark (under 0.28) or light (over 0.62), drawings on paper (0.85-0.97) with a
one-pixel outline, negatives the photo inverted."""

from __future__ import annotations

import importlib.util

import numpy as np

from synrep.data import toyworld
from synrep.data.toy_vocabulary import Attributes
from tests.conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("nada_checks", REPO / "scripts" / "nada_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered(cfg, domain: str, background: int, n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(background)
    attrs = [Attributes(i % len(cfg.toyworld.shapes), i % len(cfg.toyworld.colours), i % 2, background) for i in range(n)]
    return np.stack([toyworld.to_uint8(toyworld.render(a, cfg, rng, domain=domain)) for a in attrs])


def test_pixel_stats_read_the_backgrounds_and_paint_the_world_draws(make_cfg):
    checks = load_script()
    cfg = make_cfg()
    stats = {(domain, bg): checks.pixel_stats(rendered(cfg, domain, bg))
             for domain in ("photo", "drawing", "negative") for bg in (0, 1)}
    assert stats["photo", 0]["light border"] == 0 and stats["photo", 1]["light border"] == 1
    assert stats["photo", 0]["border brightness"] < 0.3 < 0.6 < stats["photo", 1]["border brightness"] < 0.95
    # a negative of a dark photo is light, and the other way round
    assert stats["negative", 0]["light border"] == 1 and stats["negative", 1]["light border"] == 0
    for bg in (0, 1):
        drawing, photo = stats["drawing", bg], stats["photo", bg]
        assert drawing["light border"] == 1 and 0.8 < drawing["border brightness"] < 0.98
        assert drawing["near-white"] > 0.6 > photo["near-white"]
        # an outline carries less paint than the filled object
        assert drawing["coloured"] < photo["coloured"]
