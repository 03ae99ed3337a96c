"""scripts/nada_checks.py's pixel reading (docs/nada.md quotes it), against how the toy world draws
its backgrounds: photos dark (under 0.28) or light (over 0.62), drawings on paper (0.85-0.97) with a
one-pixel outline, negatives the photo inverted."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

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


def test_the_background_table_ends_where_the_last_steps_x0_is_the_sample(make_cfg, small_world, tiny_toy_pipeline_dir):
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    checks = load_script()
    cfg = make_cfg(f"nada.generator={tiny_toy_pipeline_dir}", "nada.ddim_steps=4", base=small_world)
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    captions = [str(c) for c in toyworld.load_split(cfg, "train")["captions"]]
    rows = [line.split(" | ") for line in checks.background_table(cfg, pipe, captions, 16).splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[0].strip("| ")) for r in rows] == [int(t) for t in checks.nada.ddim_scheduler(pipe, 4).timesteps]
    # DDIM's last step (ᾱ_prev = 1) returns its clamped x̂0: that row reads the final sample itself
    last = rows[-1]
    assert last[3] == "1.000" and last[4] == "0.000" and last[5].strip(" |") == "1.000"
    assert [r[2] for r in rows] == ["frozen", "adapted", "adapted", "adapted"]


def test_the_pixel_summary_averages_saved_tables_over_runs_with_a_t_interval(tmp_path):
    checks = load_script()
    header = "| images | n | border brightness | cos(dI, dT) |\n| --- | --- | --- | --- |\n"
    for seed, (n, border, cos) in enumerate([(30, 0.2, 0.4), (34, 0.4, 0.6)]):
        (tmp_path / f"s{seed}.txt").write_text(f"# machine line\n\n{header}| frozen | 64 | 0.5 |  |\n"
                                               f"| adapted, dark | {n} | {border} | {cos} |\n")
    out = checks.pixel_summary([f"study={tmp_path / 's0.txt'}", f"study={tmp_path / 's1.txt'}"])
    row = next(line for line in out.splitlines() if "adapted, dark" in line).split(" | ")
    # two runs: half-width t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.1414 / 1.414 = 1.271
    assert row[2:] == ["2", "64", "0.300 ± 1.271", "0.500 ± 1.271 |"]
    frozen = next(line for line in out.splitlines() if "| frozen |" in line).split(" | ")
    assert frozen[4] == "0.500 ± 0.000" and frozen[5].strip(" |") == ""


def test_the_pixel_summary_sums_the_border_counts_of_the_runs_that_have_them(tmp_path):
    checks = load_script()
    pixels = "| images | n | border brightness |\n| --- | --- | --- |\n| adapted, dark | 30 | 0.3 |\n"
    counts = "| samples | n | border 0.00-0.28 | border 0.28-0.45 |\n| --- | --- | --- | --- |\n"
    files = {"s0": pixels + "\nby border\n\n" + counts + "| adapted, dark | 30 | 4 | 26 |\n",
             "s1": pixels + "\nby border\n\n" + counts + "| adapted, dark | 34 | 10 | 24 |\n",
             "old": pixels}  # saved before the counts existed
    for name, text in files.items():
        (tmp_path / f"{name}.txt").write_text(f"# machine line\n\n{text}")
    out = checks.pixel_summary([f"study={tmp_path / f'{name}.txt'}" for name in files])
    pixel_row, count_row = [line.split(" | ") for line in out.splitlines() if "| adapted, dark |" in line]
    assert pixel_row[2:4] == ["3", "90"]  # three runs' pixels, their n summed
    assert count_row[2:] == ["2", "64", "14", "50 |"]  # two runs have counts: summed


def test_the_between_table_refuses_a_pair_of_domains_other_than_photo_to_drawing(make_cfg):
    checks = load_script()
    with pytest.raises(SystemExit, match=r"photo to a drawing, not from nada.source='photo' to nada.target='negative'"):
        checks.between_table(make_cfg("nada.target=negative"), 8)


def test_the_sweep_summary_finds_each_sweeps_first_peak_and_the_valley_behind_it(tmp_path):
    checks = load_script()
    header = ("| background brightness | cos(dI, dT), from dark | cos(dI, dT), from light |\n"
              "| --- | --- | --- |\n")
    scores = {"valley": [(0.1, -0.2), (0.3, 0.1), (0.2, 0.3), (-0.1, 0.2), (0.25, 0.5)],
              "climb": [(0.0, 0.0), (0.1, 0.1), (0.2, 0.2), (0.3, 0.3), (0.4, 0.4)]}
    for name, rows in scores.items():
        body = "".join(f"| {level:.2f} | {d} | {li} |\n" for level, (d, li) in zip([0, 0.25, 0.5, 0.75, 1], rows))
        (tmp_path / f"{name}.txt").write_text(f"# machine line\n\n| images | n |\n| --- | --- |\n| photo | 1 |\n\n"
                                              f"sweep\n\n{header}{body}")
    out = checks.sweep_summary([f"{name}={tmp_path / name}.txt" for name in scores], str(tmp_path / "s.png"))
    rows = {tuple(cells[:2]): cells[2:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                                      for line in out.splitlines() if line.startswith(("| valley", "| climb")))}
    # from dark: up to 0.3 at 0.25, down to -0.1 at 0.75, never back above 0.3
    assert rows[("valley", "dark")] == ["0.300 at 0.25", "-0.100 at 0.75", "0.400", "never"]
    # from light: up to 0.3 at 0.5, down to 0.2, back above at 1.00
    assert rows[("valley", "light")] == ["0.300 at 0.50", "0.200 at 0.75", "0.100", "1.00"]
    # a sweep that only climbs peaks at its end: no valley
    assert rows[("climb", "dark")] == ["0.400 at 1.00", "0.400 at 1.00", "0.000", "never"]
    assert (tmp_path / "s.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no background sweep"):
        (tmp_path / "other.txt").write_text("| images | n |\n| --- | --- |\n| photo | 1 |\n")
        checks.sweep_summary([f"x={tmp_path / 'other.txt'}"], None)


def test_the_world_borders_count_every_train_photo_and_none_in_the_worlds_gap(make_cfg, small_world):
    checks = load_script()
    cfg = make_cfg(base=small_world)
    rows = [line.strip("|").split("|") for line in checks.world_borders_table(cfg).splitlines()
            if line.startswith("| 0.") or line.startswith("| 1.")]
    counts = {cells[0].strip(): int(cells[1]) for cells in rows}
    assert len(counts) == 20 and sum(counts.values()) == cfg.toyworld.n_train
    # dark backgrounds end at 0.28 and light ones start at 0.62: no border in between, bar clutter
    assert sum(counts[f"{lo:.2f}-{lo + 0.05:.2f}"] for lo in (0.35, 0.40, 0.45, 0.50, 0.55)) == 0


def test_a_units_leverage_is_the_border_change_along_its_best_relative_weight_change(make_cfg, small_world,
                                                                                     tiny_toy_pipeline_dir):
    import copy

    import torch

    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    checks = load_script()
    cfg = make_cfg(f"nada.generator={tiny_toy_pipeline_dir}", "nada.ddim_steps=4", base=small_world)
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    captions = [str(c) for c in toyworld.load_split(cfg, "train")["captions"]]
    n = 16
    leverage, dark, t0 = checks.border_leverage(cfg, pipe, captions, n)
    side, mask = ("dark", dark) if dark.any() else ("light", ~dark)
    unit = max(leverage[side], key=leverage[side].get)
    assert leverage[side][unit] > 0

    scheduler = checks.nada.ddim_scheduler(pipe, 4)
    noise = torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    cond, uncond = pipe.encode_batch(captions[:n], 1, True)
    frame = checks.border_frame(16)

    def mean_border(unet) -> float:
        with torch.no_grad():
            images = checks.nada.ddim_chain(unet, scheduler, noise, cond, uncond, cfg.nada.guidance_scale,
                                            source=pipe.unet, adapted_from_t=t0)
        return float(images[:, :, frame].mean(dim=(1, 2))[mask].mean())

    # the direction of steepest ascent among relative changes: d = grad * w / |grad * w|
    probe = copy.deepcopy(pipe.unet).requires_grad_(True)
    images = checks.nada.ddim_chain(probe, scheduler, noise, cond, uncond, cfg.nada.guidance_scale,
                                    source=pipe.unet, adapted_from_t=t0)
    images[:, :, frame].mean(dim=(1, 2))[mask].mean().backward()
    params = list(checks.nada_layers.layer_units(probe, cfg.nada.layer_unit)[unit].parameters())
    steps = [(p.grad * p).detach() if p.grad is not None else torch.zeros_like(p) for p in params]
    norm = sum(step.pow(2).sum() for step in steps) ** 0.5
    eps = 1e-3
    moved = copy.deepcopy(pipe.unet)
    with torch.no_grad():
        for p, step in zip(checks.nada_layers.layer_units(moved, cfg.nada.layer_unit)[unit].parameters(), steps):
            p.mul_(1 + eps * step / norm)
    finite = (mean_border(moved) - mean_border(pipe.unet)) / eps
    np.testing.assert_allclose(finite, leverage[side][unit], rtol=0.05)


def test_brightening_raises_the_background_and_leaves_the_paint(tmp_path):
    checks = load_script()
    image = np.full((1, 8, 8, 3), 60, np.uint8)  # a dark grey background
    image[0, 2:5, 2:5] = (220, 30, 30)  # red paint
    image[0, 0, 0] = 250  # near white: clipped at 1
    out = checks.brightened(image, 0.3)
    assert out[0, 6, 6].tolist() == [137, 137, 137]  # 60 + 0.3 * 255 = 136.5, rounded
    assert out[0, 3, 3].tolist() == [220, 30, 30] and out[0, 0, 0].tolist() == [255, 255, 255]

    # the summary: means over the samples of a variant's runs, weighted by each run's n
    def saved(n_dark, cos_dark):
        rows = "".join(f"| {d:.2f} | 0.3 | {c} | 0.0 | 0.9 | 0.6 | 0.5 |\n" for d, c in zip((0.0, 0.3, 0.6), cos_dark))
        return ("| delta | border, dark | cos(dI, dT), dark | read: drawing, dark | border, light | cos(dI, dT), light "
                "| read: drawing, light |\n| --- | --- | --- | --- | --- | --- | --- |\n" + rows
                + "\nper sample\n\n| samples | n |\n| --- | --- |\n" + f"| dark | {n_dark} |\n| light | 10 |\n")
    (tmp_path / "a.txt").write_text(saved(10, (0.5, 0.1, 0.4)))
    (tmp_path / "b.txt").write_text(saved(30, (0.3, 0.2, 0.5)))
    out = checks.brighten_summary([f"v={tmp_path / 'a.txt'}", f"v={tmp_path / 'b.txt'}"])
    dark = next(line for line in out.splitlines() if line.startswith("| v | dark")).split(" | ")
    # (10 * 0.5 + 30 * 0.3) / 40 = 0.35; lowest at 0.30: (1 + 6) / 40 = 0.175; at 0.60: (4 + 15) / 40 = 0.475
    assert dark[2:4] == ["2", "40"] and dark[4].startswith("0.350") and dark[5].startswith("0.30: 0.175")
    assert dark[6].startswith("0.60: 0.475")
