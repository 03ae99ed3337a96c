"""The source-mode registry: a mode declared in one place is checked by the config and generated
like the built-in ones. A throw-away mode is registered for the test only."""

from __future__ import annotations

import numpy as np
import pytest

from synrep import source_modes
from synrep.config import ConfigError, run_dir
from synrep.data.shards import read_shard, shard_path
from synrep.generation import generate
from synrep.generation.provenance import regenerate
from synrep.generation.sources import source_spec
from synrep.source_modes import MODES, SourceMode
from tests.conftest import assert_regenerated
from tests.test_generate import gen_overrides, write_captions


def _cfg_only(source):
    if source.guidance.kind != "cfg":
        yield "guidance.kind", "mode plain guides by classifier-free guidance only"


# Like text2img (it starts from the caption alone, so it samples through the text-to-image call),
# without prompts of its own or CLIP guidance
PLAIN = SourceMode("plain", own_prompts=False, checks=_cfg_only)


@pytest.fixture
def plain_mode(monkeypatch):
    monkeypatch.setitem(MODES, "plain", PLAIN)
    return PLAIN


def test_the_builtin_modes_are_the_config_s():
    assert list(MODES) == ["text2img", "inpaint", "unclip", "variation", "union"]
    assert [m.name for m in MODES.values() if m.real_image] == ["inpaint", "variation"]
    assert source_modes.owners("unclip") == ["unclip", "variation"]
    with pytest.raises(ValueError, match="unknown source mode 'plain'"):
        source_modes.get("plain")


def test_a_registered_mode_passes_through_the_config_checks(plain_mode, make_cfg, tmp_path):
    cfg = make_cfg("sources.p.mode=plain")
    assert cfg.sources.p.mode == "plain"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    bad = {
        "sources.p.guidance.kind=clip": "sources.p.guidance.kind': mode plain guides by classifier-free guidance only",
        f"sources.p.prompts={prompts}": "sources.p.prompts': mode plain starts from each caption's real image; "
                                        "prompts of its own suit modes text2img and unclip",
        "sources.p.inpaint.region=object": "sources.p.inpaint': inpainting settings need mode: inpaint",
        "sources.p.unclip.prior_w=2": "sources.p.unclip': unCLIP settings need mode: unclip or variation",
        "sources.p.union=[w2]": "sources.p.union': mode union needs the sources it joins",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            make_cfg("sources.p.mode=plain", override)


def test_a_registered_mode_generates_a_tiny_source(plain_mode, make_cfg, small_world, tiny_toy_pipeline_dir):
    """The throw-away mode samples as text2img does: the same seeds give the images of a text2img
    source at the same w, bit for bit; its records carry its own spec and regenerate."""
    cfg = make_cfg(*gen_overrides(small_world, tiny_toy_pipeline_dir, "sources.p.mode=plain", "sources.p.guidance.w=3"))
    write_captions(cfg)
    generate.run(cfg, source="p")
    generate.run(cfg, source="w3")
    shards = run_dir(cfg, "shards")
    spec = source_spec(cfg, "p")
    assert spec["mode"] == "plain" and "inpaint" not in spec and "unclip" not in spec
    for i in range(3):
        mine, text2img = read_shard(shard_path(shards, "p", i)), read_shard(shard_path(shards, "w3", i))
        for a, b in zip(mine, text2img, strict=True):
            assert a["record"]["source"] == spec and a["record"]["caption"] == b["record"]["caption"]
            assert all(np.array_equal(x, y) for x, y in zip(a["images"], b["images"], strict=True))
    first = next(read_shard(shard_path(shards, "p", 0)))
    assert_regenerated(regenerate(first["record"], 1), first["images"][1])
