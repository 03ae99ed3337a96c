"""StyleGAN-NADA for the toy generator (recipes/nada.py) and its measurement
(evaluation/nada_quality.py, evaluation/domain_classifier.py), on the tiny generator and CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY_CLIP, tmp_overrides

# A few steps of everything: 2 units of 4 trained, a 2-step chain, 4 captions x 2 images measured
TINY_NADA = ["nada.steps=3", "nada.batch_size=2", "nada.ddim_steps=2", "nada.k=2", "nada.eval_every=2",
             "nada.eval_captions=4", "nada.eval_images_per_caption=2", "nada.lr=1e-2", "nada.classifier_epochs=1",
             "generation.steps=2", "sample_quality.classifier_epochs=1", *TINY_CLIP]


def nada_overrides(root, pipeline, clip, *extra):
    return tmp_overrides(root, f"nada.generator={pipeline}", f"nada.clip_models=[{clip}]",
                         f"nada.output_dir={root}/results/nada", *TINY_NADA, *extra)


def test_directional_loss_is_one_minus_cosine_by_hand():
    from synrep.recipes.nada_loss import directional_loss

    rng = np.random.default_rng(0)
    train, frozen = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    direction = rng.normal(size=8)
    direction /= np.linalg.norm(direction)
    expected = np.mean([1 - (a - b) @ direction / np.linalg.norm(a - b) for a, b in zip(train, frozen)])
    got = directional_loss(torch.tensor(train), torch.tensor(frozen), torch.tensor(direction))
    assert float(got) == pytest.approx(expected, abs=1e-10)
    # an image change along the text direction costs nothing, against it the most
    along = torch.tensor(frozen) + torch.tensor([[0.5], [1.0], [2.0], [3.0], [0.1]]) * torch.tensor(direction)
    assert float(directional_loss(along, torch.tensor(frozen), torch.tensor(direction))) == pytest.approx(0, abs=1e-10)
    against = torch.tensor(frozen) - torch.tensor(direction)
    assert float(directional_loss(against, torch.tensor(frozen), torch.tensor(direction))) == pytest.approx(2.0)


def test_directional_loss_at_no_change_is_one_with_a_bounded_gradient_along_the_text_direction():
    from synrep.recipes.nada_loss import DELTA_FLOOR, directional_loss

    direction = torch.tensor([0.6, 0.8, 0.0])
    frozen = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    train = frozen.clone().requires_grad_(True)  # both copies equal: ΔI = 0
    loss = directional_loss(train, frozen, direction)
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    # d/dΔI of -(ΔI·ΔT)/floor, averaged over the 2 rows: finite, pointing against ΔT
    assert torch.allclose(train.grad, -direction.expand(2, 3) / (2 * DELTA_FLOOR))


def test_text_direction_is_the_normalised_mean_template_difference():
    from synrep.recipes.nada_loss import text_direction

    table = {"src a": [1.0, 0.0, 0.0], "src b": [0.0, 1.0, 0.0], "tgt a": [0.0, 0.0, 1.0], "tgt b": [0.6, 0.0, 0.8]}

    class Guide:  # unit text embeddings by prompt
        def text_embeddings(self, prompts):
            return torch.tensor([table[p] for p in prompts])

    got = text_direction(Guide(), [["src a"], ["src b"]], [["tgt a"], ["tgt b"]])
    expected = (np.array(table["tgt a"]) + table["tgt b"] - table["src a"] - table["src b"]) / 2
    assert np.allclose(got.numpy(), expected / np.linalg.norm(expected))


def test_bad_nada_values_fail_at_load_in_one_line_naming_the_key(small_world, capsys):
    from synrep.__main__ import main
    from synrep.config import ConfigError, load_config

    for override, message in [("nada.target=paintng", r"config key 'nada.target': unknown domain 'paintng'"),
                              ("nada.target=photo", r"config key 'nada.target': the same domain as nada.source"),
                              ("toyworld.domains=[negative]", r"config key 'nada.target': 'drawing' is not one of "
                                                              r"toyworld.domains \['negative'\]"),
                              ("nada.clip_model_weights=[1,1]", r"config key 'nada.clip_model_weights': one weight "
                                                                r"per CLIP of nada.clip_models \(1 CLIPs, 2 weights\)"),
                              ("nada.target_templates=[a sketch]", r"config key 'nada.target_templates\[0\]': "
                                                                   r"'a sketch' has no \{x\}")]:
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_overrides(small_world, override))
    assert main(["train_nada", "nada.target=paintng", *tmp_overrides(small_world)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config key 'nada.target'" in err and "drawing" in err


@pytest.fixture(scope="module")
def trained(small_world, tiny_toy_pipeline_dir, tiny_clip_dir):
    """A few NADA steps on the tiny generator: (cfg, pipe, its UNet's weights before, trained UNet, summary)."""
    from synrep.config import load_config
    from synrep.data import toyworld
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada

    torch.set_num_threads(1)
    cfg = load_config(nada_overrides(small_world, tiny_toy_pipeline_dir, tiny_clip_dir))
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    captions = [str(c) for c in toyworld.load_split(cfg, "train")["captions"]]
    snapshots = {}
    unet, summary = nada.train(cfg, pipe, [load_guide(str(tiny_clip_dir))], captions,
                               lambda step, state: snapshots.__setitem__(step, state), progress=False)
    return cfg, pipe, before, unet, summary, snapshots


def test_only_the_top_k_units_train_and_all_else_is_bit_identical(trained):
    cfg, _, before, unet, summary, snapshots = trained
    scores, chosen = summary["scores"], summary["chosen"]
    assert len(chosen) == cfg.nada.k and len(summary["units"]) > cfg.nada.k
    assert chosen == sorted(scores, key=lambda u: -scores[u])[:cfg.nada.k]
    assert scores[chosen[-1]] > min(scores.values())  # the ranking separates something
    changed = {k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "training changed nothing"
    assert all(any(k.startswith(u + ".") for u in chosen) for k in changed), sorted(changed)
    for unit in chosen:  # each trained unit moved
        assert any(k.startswith(unit + ".") for k in changed), unit
    # snapshots hold the trained units only, at 0, every eval_every steps and the end
    assert sorted(snapshots) == [0, 2, 3]
    assert all(any(k.startswith(u + ".") for u in chosen) for k in snapshots[3])
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in snapshots[3].items())
    assert all(torch.equal(v, before[k]) for k, v in snapshots[0].items())
    assert len(summary["curve"]) == cfg.nada.steps and summary["curve"][0]["directional"] == pytest.approx(1.0)


def test_the_frozen_copy_never_changes(trained):
    _, pipe, before, unet, _, _ = trained
    assert unet is not pipe.unet
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    assert not any(p.requires_grad for p in pipe.unet.parameters())


def test_the_chain_of_the_frozen_unet_is_the_pipelines_own_ddim_sampling(tiny_toy_pipeline_dir):
    from diffusers.utils.torch_utils import randn_tensor

    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada

    torch.set_num_threads(1)
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a blue ring"]
    made = pipe(prompts, num_inference_steps=3, guidance_scale=2.0, output_type="pt",
                generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    noise = randn_tensor((2, 3, 16, 16), generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    cond, uncond = pipe.encode_batch(prompts, 1, True)
    with torch.no_grad():
        chain = nada.ddim_chain(pipe.unet, nada.ddim_scheduler(pipe, 3), noise, cond, uncond, 2.0)
    assert torch.allclose(chain, made, atol=1e-5)


def test_ddim_inversion_of_a_photo_is_a_start_from_which_the_shipped_generator_redraws_it(small_world):
    from synrep.config import load_config
    from synrep.data import toyworld
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada

    torch.set_num_threads(1)
    cfg = load_config(tmp_overrides(small_world))
    split = toyworld.load_split(cfg, "train")
    pipe = ToyGlidePipeline.from_pretrained("models/toy_generator")
    scheduler = nada.ddim_scheduler(pipe, 4)
    above, below = nada.split_timesteps(scheduler, nada.adapted_from(scheduler, cfg.nada.min_alpha_bar))
    photos = torch.from_numpy(split["images"][:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    cond, uncond = pipe.encode_batch([str(c) for c in split["captions"][:8]], 1, True)
    with torch.no_grad():
        x_t0 = nada.ddim_invert(pipe.unet, scheduler, photos, cond, uncond, 2.0, int(below[0]), 10)
        redrawn = nada.to_unit(nada.ddim_steps(pipe.unet, scheduler, x_t0, cond, uncond, 2.0, below))
        from_noise = nada.ddim_chain(pipe.unet, scheduler, torch.randn(photos.shape, generator=torch.Generator().manual_seed(0)),
                                     cond, uncond, 2.0)
    target = (photos + 1) / 2
    own = (redrawn - target).abs().mean(dim=(1, 2, 3))
    # each photo comes back from its own inversion, far closer than a sample of its caption or another photo's redraw
    assert float(own.max()) < 0.5 * float((from_noise - target).abs().mean())
    assert float(own.mean()) < 0.5 * float((redrawn.roll(1, 0) - target).abs().mean())
    assert 0.8 < float(x_t0.std()) < 1.1  # a noised image at ᾱ = 0.14, not the photo itself


def test_the_inversion_start_trains_from_inverted_photos_and_asks_for_them(small_world, tiny_toy_pipeline_dir,
                                                                         tiny_clip_dir):
    from synrep.config import load_config
    from synrep.data import toyworld
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada

    torch.set_num_threads(1)
    cfg = load_config(nada_overrides(small_world, tiny_toy_pipeline_dir, tiny_clip_dir, "nada.start=inversion",
                                     "nada.inversion_images=4", "nada.inversion_steps=2"))
    split = toyworld.load_split(cfg, "train")
    captions = [str(c) for c in split["captions"]]
    guides = [load_guide(str(tiny_clip_dir))]
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    unet, summary = nada.train(cfg, pipe, guides, captions, progress=False, photos=split["images"])
    assert summary["start"] == "inversion"
    assert any(not torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    with pytest.raises(ValueError, match="needs the captions' real photos"):
        nada.train(cfg, pipe, guides, captions, progress=False)


def test_train_nada_saves_a_pipeline_that_load_pipeline_samples_and_the_curve_is_measured(
        small_world, tiny_toy_pipeline_dir, tiny_clip_dir):
    from synrep.config import load_config
    from synrep.diffusion.pipelines import load_pipeline
    from synrep.evaluation import nada_quality
    from synrep.recipes import nada

    cfg = load_config(nada_overrides(small_world, tiny_toy_pipeline_dir, tiny_clip_dir))
    outputs = nada.run(cfg)
    folder = outputs["model"]
    assert (folder / "recipe.yaml").exists()
    summary = json.loads((folder / "training.json").read_text())
    assert len(summary["curve"]) == 3 and len(summary["chosen"]) == 2
    # the switch between the frozen and the adapted UNet travels with the folder
    assert json.loads((folder / "model_index.json").read_text())["adapted_from"] == summary["adapted_from"]
    assert (folder / "source_unet").is_dir()
    assert sorted(nada.snapshot_files(outputs["snapshots"])) == [0, 2, 3]
    pipe = load_pipeline(str(folder), "dpmsolver")
    images = pipe(["a red circle"], num_inference_steps=2, output_type="np",
                  generator=[torch.Generator().manual_seed(0)]).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()

    result = nada_quality.run(cfg)
    for path in result.values():
        assert path.exists(), path
    rows = json.loads(result["json"].read_text())["rows"]
    adapted = [r for r in rows if r["kind"] == "adapted"]
    assert [r["step"] for r in adapted] == [0, 2, 3]
    assert {r["kind"] for r in rows} == {"adapted", "baseline", "real_target"}
    # step 0 is the frozen generator itself: all its content kept, no image change
    assert adapted[0]["kept_shape"] == 1.0 and adapted[0]["kept_colour"] == 1.0
    assert adapted[0]["clip_direction"] == 0.0
    for row in rows:
        assert row["target_fraction"] == row[f"domain_{cfg.nada.target}"]  # the target's share of the classes
        assert sum(row[f"domain_{d}"] for d in ("photo", "drawing", "negative", "pixelated", "none")) == pytest.approx(1.0)
    assert "| kind" in result["table"].read_text()


def test_the_target_world_is_real_images_of_the_target_domain_only(make_cfg, small_world, tmp_path):
    """nada_target_world: train / val / test of the target domain, deterministic, in the world's
    format (so StableRep's evaluation reads it through eval.root), and read as that domain by the
    toy world's own domain labels: its images are the domain renders of their attributes."""
    from synrep.data import toyworld
    from synrep.evaluation.features import load_eval_data

    cfg = make_cfg(f"nada.target_world={tmp_path}/world", base=small_world)
    outputs = toyworld.target_world_run(cfg)
    splits = {s: toyworld.load_split(tmp_path / "world", s) for s in ("train", "val", "test")}
    assert [len(splits[s]["images"]) for s in ("train", "val", "test")] == [40, 20, 200]
    first = {s: p.read_bytes() for s, p in outputs.items()}
    toyworld.target_world_run(cfg)
    assert all(outputs[s].read_bytes() == first[s] for s in outputs)  # deterministic
    # drawings look like the world's own drawings (pale pen on paper: mean ~220 of 255), not its
    # photos (~117): the mean brightness of each split against the world's domain split
    domains = toyworld.load_split(cfg, "domains_train")
    drawings = domains["images"][domains["domain"] == list(cfg.toyworld.domains).index("drawing")]
    photos = toyworld.load_split(cfg, "train")["images"]
    for split in splits.values():
        assert abs(split["images"].mean() - drawings.mean()) < 10 < abs(split["images"].mean() - photos.mean())
    data = load_eval_data(make_cfg(f"eval.root={tmp_path}/world", base=small_world))
    assert len(data.labels["shape"]["test"]) == 200
    with pytest.raises(ValueError, match=r"nada.target.*paintng"):
        toyworld.target_world_run(make_cfg("nada.target=paintng", f"nada.target_world={tmp_path}/bad", base=small_world))


def test_the_adapted_unet_takes_exactly_the_steps_where_alpha_bar_reaches_the_threshold(trained):
    """Training starts the trained chain where x̂0 is defined: the frozen UNet takes the DDIM steps
    whose ᾱ_t (here from the cosine schedule's formula, not the scheduler) is below nada.min_alpha_bar."""
    import math

    from synrep.recipes import nada

    cfg, pipe, _, _, summary, _ = trained
    config = pipe.scheduler.config
    assert config.beta_schedule == "squaredcos_cap_v2"
    f = [math.cos((i / config.num_train_timesteps + 0.008) / 1.008 * math.pi / 2) ** 2
         for i in range(config.num_train_timesteps + 1)]
    alpha_bar = np.cumprod([1 - min(1 - f[i + 1] / f[i], 0.999) for i in range(config.num_train_timesteps)])
    steps = [int(t) for t in nada.ddim_scheduler(pipe, cfg.nada.ddim_steps).timesteps]
    assert summary["frozen_timesteps"] == [t for t in steps if alpha_bar[t] < cfg.nada.min_alpha_bar] == [999]
    assert summary["trained_timesteps"] == [t for t in steps if alpha_bar[t] >= cfg.nada.min_alpha_bar]
    assert summary["adapted_from"] == max(t for t in range(1000) if alpha_bar[t] >= cfg.nada.min_alpha_bar)


def test_the_saved_adapted_pipeline_samples_as_training_did(trained, tmp_path):
    """Any sampler of the saved pipeline uses the frozen UNet above adapted_from and the adapted one
    at and below: its DDIM sampling is the training chain, and its switch is that of two plain
    pipelines (all-frozen and all-adapted) glued at adapted_from, after a save and load."""
    from diffusers.utils.torch_utils import randn_tensor

    from synrep.diffusion.pipelines import load_pipeline
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada

    cfg, pipe, _, unet, summary, _ = trained
    t0, w, prompts, seeds = summary["adapted_from"], 2.0, ["a red circle", "a blue ring"], (1, 2)

    def gens():
        return [torch.Generator().manual_seed(s) for s in seeds]

    def make(adapted_from):
        p = nada.ToyGlideAdaptedPipeline(unet=unet, scheduler=nada.ddim_scheduler(pipe, 4), text_encoder=pipe.text_encoder,
                                         tokenizer=pipe.tokenizer, source_unet=pipe.unet, adapted_from=adapted_from)
        p.set_progress_bar_config(disable=True)
        return p

    adapted = make(t0)
    made = adapted(prompts, num_inference_steps=4, guidance_scale=w, output_type="pt", generator=gens()).images
    noise = randn_tensor((2, 3, 16, 16), generator=gens())
    cond, uncond = pipe.encode_batch(prompts, 1, True)
    with torch.no_grad():
        chain = nada.ddim_chain(unet, nada.ddim_scheduler(pipe, 4), noise, cond, uncond, w, source=pipe.unet,
                                adapted_from_t=t0)
    assert torch.allclose(made, chain, atol=1e-5)
    # the switch matters: all-adapted and all-frozen sampling differ from it and from each other,
    # and the two extremes are the plain pipelines of each UNet
    plain = {}
    for name, u in (("frozen", pipe.unet), ("adapted", unet)):
        p = ToyGlidePipeline(unet=u, scheduler=nada.ddim_scheduler(pipe, 4), text_encoder=pipe.text_encoder,
                             tokenizer=pipe.tokenizer)
        p.set_progress_bar_config(disable=True)
        plain[name] = p(prompts, num_inference_steps=4, guidance_scale=w, output_type="pt", generator=gens()).images
    assert torch.equal(make(-1)(prompts, num_inference_steps=4, guidance_scale=w, output_type="pt",
                                generator=gens()).images, plain["frozen"])
    assert torch.equal(make(999)(prompts, num_inference_steps=4, guidance_scale=w, output_type="pt",
                                 generator=gens()).images, plain["adapted"])
    assert not torch.allclose(made, plain["adapted"]) and not torch.allclose(made, plain["frozen"])
    # saved and loaded as a source loads a generator: the same images under another sampler too
    adapted.save_pretrained(tmp_path / "g", safe_serialization=True)
    assert json.loads((tmp_path / "g" / "model_index.json").read_text())["adapted_from"] == t0
    for sampler in ("ddim", "dpmsolver"):
        loaded = load_pipeline(str(tmp_path / "g"), sampler)
        assert type(loaded) is nada.ToyGlideAdaptedPipeline and loaded.config.adapted_from == t0
        adapted.scheduler = loaded.scheduler
        ref = adapted(prompts, num_inference_steps=4, guidance_scale=w, output_type="pt", generator=gens()).images
        got = loaded(prompts, num_inference_steps=4, guidance_scale=w, output_type="pt", generator=gens()).images
        assert torch.equal(got, ref), sampler


def test_bad_loss_and_threshold_name_their_key(small_world):
    from synrep.config import load_config

    with pytest.raises(ValueError, match=r"config key 'nada.loss': 'clip'"):
        load_config(tmp_overrides(small_world, "nada.loss=clip"))
    with pytest.raises(ValueError, match=r"config key 'nada.min_alpha_bar'"):
        load_config(tmp_overrides(small_world, "nada.min_alpha_bar=1.5"))


def test_code_scores_are_nadas_sgd_step_on_each_units_own_conditioning_and_change_no_weight(tiny_toy_pipeline_dir,
                                                                                           tiny_clip_dir):
    """The score of a unit is lr x the mean |gradient| of the global loss in its own copy of its
    conditioning input; checked against central finite differences of that loss along the
    gradient's sign, with the copy added by a hook of the test's own."""
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada, nada_layers
    from synrep.recipes.nada_loss import global_loss, text_embedding

    torch.set_num_threads(1)
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    unet = pipe.unet.eval().requires_grad_(False)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    guide = load_guide(str(tiny_clip_dir))
    target = text_embedding(guide, [["a drawing of a red circle"]])
    scheduler = nada.ddim_scheduler(pipe, 4)
    x = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    cond, uncond = pipe.encode_batch(["a red circle", "a blue ring"], 1, True)
    steps = list(scheduler.timesteps)[1:]  # the adapted part of the chain: no t = 999

    def sample(u):
        return nada.to_unit(nada.ddim_steps(u, scheduler, x, cond, uncond, 2.0, steps))

    def loss_of(u):
        return float(global_loss(guide.image_embeddings(sample(u)), target))

    units = nada_layers.layer_units(unet)
    lr = 0.5
    scores = nada_layers.code_scores(unet, units, sample, [(guide, 1.0, target)], 1, lr)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert not any(m._forward_pre_hooks for m in unet.modules())
    kinds = {name: nada_layers.conditioned(m) for name, m in units.items()}
    assert {"resnet", "attention", None} <= set(kinds.values())
    assert all((scores[name] == 0) == (kind is None) for name, kind in kinds.items())

    for name in ["down_blocks.0.resnets.0", next(n for n, k in kinds.items() if k == "attention")]:
        module = units[name]
        codes = {}

        def shift(m, args, kwargs, sign):
            key = "encoder_hidden_states" if kinds[name] == "attention" else None
            value = kwargs[key] if key else args[1]
            codes.setdefault("shape", value.shape)
            moved = value + sign * codes["direction"] if "direction" in codes else value
            return (args, {**kwargs, key: moved}) if key else ((args[0], moved, *args[2:]), kwargs)

        with torch.no_grad():
            hook = module.register_forward_pre_hook(lambda m, a, k: shift(m, a, k, 0.0), with_kwargs=True)
            sample(unet)
            hook.remove()
        # the gradient's sign, from a copy made by the test's hook: the change along it is sum |g|
        code = torch.zeros(codes["shape"], requires_grad=True)
        hook = module.register_forward_pre_hook(
            lambda m, a, k: shift(m, a, k, 1.0), with_kwargs=True)
        codes["direction"] = code
        grad, = torch.autograd.grad(global_loss(guide.image_embeddings(sample(unet)), target), [code])
        eps = 1e-3
        codes["direction"] = eps * grad.sign()
        with torch.no_grad():
            plus = loss_of(unet)
            codes["direction"] = -eps * grad.sign()
            minus = loss_of(unet)
        hook.remove()
        mean_abs_gradient = (plus - minus) / (2 * eps) / grad.numel()
        assert scores[name] == pytest.approx(lr * mean_abs_gradient, rel=0.05), name


def test_training_with_code_scores_never_chooses_a_resampler(small_world, tiny_toy_pipeline_dir, tiny_clip_dir):
    from synrep.config import load_config
    from synrep.data import toyworld
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada, nada_layers

    torch.set_num_threads(1)
    cfg = load_config(nada_overrides(small_world, tiny_toy_pipeline_dir, tiny_clip_dir, "nada.layer_score=codes",
                                     "nada.reselect_every=1", "nada.steps=2"))
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    captions = [str(c) for c in toyworld.load_split(cfg, "train")["captions"]]
    unet, summary = nada.train(cfg, pipe, [load_guide(str(tiny_clip_dir))], captions, progress=False)
    units = nada_layers.layer_units(unet)
    assert summary["layer_score"] == "codes" and len(summary["selections"]) == 2
    for selection in summary["selections"]:
        assert selection["chosen"] == sorted(selection["scores"], key=lambda u: -selection["scores"][u])[:cfg.nada.k]
        assert all(nada_layers.conditioned(units[name]) for name in selection["chosen"])


def test_code_scores_ask_for_module_units_and_enough_of_them(small_world, tiny_toy_pipeline_dir, tiny_clip_dir):
    from synrep.config import load_config
    from synrep.data import toyworld
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada, nada_layers
    from synrep.settings import ConfigError

    with pytest.raises(ConfigError, match=r"config key 'nada.layer_score': codes .* nada.layer_unit must be module, "
                                          r"not 'block'"):
        load_config(tmp_overrides(small_world, "nada.layer_score=codes", "nada.layer_unit=block"))
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    units = nada_layers.layer_units(pipe.unet)
    coded = sum(1 for m in units.values() if nada_layers.conditioned(m))
    assert coded < len(units)
    cfg = load_config(nada_overrides(small_world, tiny_toy_pipeline_dir, tiny_clip_dir, "nada.layer_score=codes",
                                     f"nada.k={coded + 1}"))
    captions = [str(c) for c in toyworld.load_split(cfg, "train")["captions"]]
    with pytest.raises(ConfigError, match=rf"config key 'nada.k': {coded + 1} units asked, layer_score codes scores "
                                          rf"the {coded} that read a conditioning input"):
        nada.train(cfg, pipe, [load_guide(str(tiny_clip_dir))], captions, progress=False)


def test_nada_trains_every_step_of_a_zero_terminal_snr_generator_and_from_its_inversions(
        small_world, tiny_clip_dir, tmp_path):
    """min_alpha_bar 0 gives the adapted UNet every step, t = 999 included, which a zero-terminal-SNR
    v-prediction generator defines (x̂0 = -v there); the inversion start inverts it too."""
    from synrep.config import load_config
    from synrep.data import toyworld
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada
    from synrep.recipes.toy_generator import build_pipeline
    from tests.conftest import TINY_GENERATOR
    from tests.test_generator import ZERO_SNR

    torch.set_num_threads(1)
    folder = tmp_path / "zero_snr"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        build_pipeline(load_config(tmp_overrides(small_world, *TINY_GENERATOR, *ZERO_SNR))).save_pretrained(folder)
    cfg = load_config(nada_overrides(small_world, folder, tiny_clip_dir, "nada.min_alpha_bar=0", "nada.steps=2"))
    pipe = ToyGlidePipeline.from_pretrained(folder)
    captions = [str(c) for c in toyworld.load_split(cfg, "train")["captions"]]
    _, summary = nada.train(cfg, pipe, [load_guide(str(tiny_clip_dir))], captions, progress=False)
    assert summary["frozen_timesteps"] == [] and summary["trained_timesteps"][0] == 999
    assert all(np.isfinite(row["loss"]) for row in summary["curve"])
    photos = toyworld.load_split(cfg, "train")["images"]
    _, summary = nada.train(load_config(nada_overrides(small_world, folder, tiny_clip_dir, "nada.start=inversion",
                                                       "nada.steps=2")),
                            pipe, [load_guide(str(tiny_clip_dir))], captions, progress=False, photos=photos)
    assert all(np.isfinite(row["loss"]) for row in summary["curve"])


def test_ddim_inversion_reads_a_v_prediction_model_as_v(tiny_toy_pipeline_dir):
    """The same UNet read as a v-prediction model inverts as an epsilon one whose output is the ε that
    v implies (ε = sqrt(ᾱ) v + sqrt(1 - ᾱ) x_t, written here by hand; classifier-free guidance is
    linear, so guiding either output gives the same ε)."""
    from types import SimpleNamespace

    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import nada

    torch.set_num_threads(1)
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    eps_scheduler = nada.ddim_scheduler(pipe, 4)
    v_scheduler = type(eps_scheduler).from_config({**eps_scheduler.config, "prediction_type": "v_prediction"})
    alphas = eps_scheduler.alphas_cumprod

    def as_noise(x, t, **kwargs):
        a = alphas[int(t)]
        return SimpleNamespace(sample=a.sqrt() * pipe.unet(x, t, **kwargs).sample + (1 - a).sqrt() * x)

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond, uncond = pipe.encode_batch(["a red circle", "a blue square"], 1, True)
    with torch.no_grad():
        as_v = nada.ddim_invert(pipe.unet, v_scheduler, images, cond, uncond, 2.0, 749, 5)
        by_hand = nada.ddim_invert(as_noise, eps_scheduler, images, cond, uncond, 2.0, 749, 5)
        as_eps = nada.ddim_invert(pipe.unet, eps_scheduler, images, cond, uncond, 2.0, 749, 5)
    torch.testing.assert_close(as_v, by_hand, rtol=1e-4, atol=1e-4)
    assert float((as_v - as_eps).abs().mean()) > 0.1  # reading v as ε would invert elsewhere
