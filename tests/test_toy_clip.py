"""The toy CLIP: trained by the project's CLIP trainer, loaded by open_clip alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from synrep.data import toyworld
from synrep.diffusion.clip_guidance import load_clip
from synrep.learning import toy_clip

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "toy_clip"
TINY_CLIP = ["toy_clip.epochs=1", "toy_clip.batch_size=64", "toy_clip.warmup_steps=2",
             "toy_clip.model.vision_width=32", "toy_clip.model.vision_layers=1", "toy_clip.model.text_layers=1",
             "toy_clip.model.text_width=32"]

OPEN_CLIP_ONLY = """
import sys, numpy as np, torch, open_clip
from PIL import Image
folder, images_file, out_file = sys.argv[1:]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
model.eval()
data = np.load(images_file)
x = torch.stack([preprocess(Image.fromarray(im)) for im in data["images"]])
with torch.no_grad():
    image = model.encode_image(x, normalize=True)
    text = model.encode_text(tokenizer(list(data["captions"])), normalize=True)
assert not any(name.startswith("synrep") for name in sys.modules)
torch.save({"image": image, "text": text, "preprocessed": x}, out_file)
"""


def test_trained_toy_clip_loads_in_plain_open_clip(small_world, tmp_path):
    from synrep.config import load_config
    from tests.conftest import tmp_overrides

    cfg = load_config([*tmp_overrides(small_world), f"paths.results_dir={tmp_path}/results", *TINY_CLIP])
    model, curve = toy_clip.train(cfg, progress=False)
    assert len(curve) == 1 and np.isfinite(curve[0])
    out = tmp_path / "clip"
    out.mkdir()
    toy_clip.save(model, cfg, out)

    data = toyworld.load_split(cfg, "domains_test")
    images, captions = data["images"][:12], data["captions"][:12]
    np.savez(tmp_path / "batch.npz", images=images, captions=captions)
    done = subprocess.run([sys.executable, "-c", OPEN_CLIP_ONLY, str(out), str(tmp_path / "batch.npz"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")

    # open_clip's own preprocessing of a PIL image is the trainer's normalisation
    ours_x = toy_clip.preprocess_images(torch.from_numpy(images).permute(0, 3, 1, 2))
    torch.testing.assert_close(theirs["preprocessed"], ours_x, atol=1e-5, rtol=0)
    with torch.no_grad():
        image = model.encode_image(ours_x, normalize=True)
        tokens = load_clip(out)[1](list(captions))
        text = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(theirs["image"], image, atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs["text"], text, atol=1e-5, rtol=0)


def test_load_names_the_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "open_clip_config.json")):
        load_clip(tmp_path)


@pytest.mark.skipif(not (SHIPPED / "training.json").exists(), reason="models/toy_clip is not trained yet")
def test_shipped_toy_clip_reproduces_its_recorded_zero_shot_accuracy(tmp_path):
    """The shipped weights, loaded through open_clip, score on freshly rendered held-out images what
    training recorded (CPU kernels differ between machines: a few images may flip)."""
    from synrep.config import load_config

    recipe = OmegaConf.load(SHIPPED / "recipe.yaml")
    tw = recipe.toyworld
    cfg = load_config([f"paths.data_dir={tmp_path}/data", f"paths.results_dir={tmp_path}/results",
                       f"toyworld.seed={tw.seed}", f"toyworld.n_test={tw.n_test}",
                       f"toyworld.n_domain_test={tw.n_domain_test}", "toyworld.n_train=10", "toyworld.n_val=10",
                       "toyworld.n_domain_train=1", f"toyworld.domains={list(tw.domains)}"])
    toyworld.run(cfg)
    model, tokenizer = load_clip(SHIPPED)
    measured = toy_clip.zero_shot(cfg, model, tokenizer, toy_clip.corpus(cfg, "test"))
    recorded = json.loads((SHIPPED / "training.json").read_text())
    assert measured == pytest.approx(recorded["zero_shot_test"], abs=0.01)
    # and it has learnt what the next systems need: colour and which domain an image is in
    chance = recorded["chance"]
    assert measured["photo_colour"] > 3 * chance["photo_colour"] and measured["domain"] > 2 * chance["domain"]
