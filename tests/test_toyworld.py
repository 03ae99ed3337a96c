import hashlib
import unicodedata

import numpy as np
import pytest

from synrep.data import toy_vocabulary, toyworld


def _digest(path):
    with np.load(path) as data:
        return hashlib.sha256(b"".join(data[k].tobytes() for k in sorted(data.files))).hexdigest()


def test_deterministic_from_seed(make_cfg, tmp_path):
    a = toyworld.run(make_cfg(base=tmp_path / "a"))
    b = toyworld.run(make_cfg(base=tmp_path / "b"))
    c = toyworld.run(make_cfg("toyworld.seed=1", base=tmp_path / "c"))
    for split in ("train", "val", "test"):
        assert _digest(a[split]) == _digest(b[split])
        assert _digest(a[split]) != _digest(c[split])
    assert a["captions"].read_bytes() == b["captions"].read_bytes()
    assert a["captions"].read_bytes() != c["captions"].read_bytes()


def test_no_two_renders_identical_and_labels_balanced(small_world, make_cfg):
    cfg = make_cfg(base=small_world)
    train = toyworld.load_split(cfg, "train")
    flat = train["images"].reshape(len(train["images"]), -1)
    assert len(np.unique(flat, axis=0)) == len(flat)
    # the same attributes rendered twice still differ (jitter)
    attrs = toy_vocabulary.Attributes(0, 0, 1, 0)
    rng = np.random.default_rng(0)
    assert not np.array_equal(toyworld.render(attrs, cfg, rng), toyworld.render(attrs, cfg, rng))
    counts = np.bincount(train["shape"], minlength=len(cfg.toyworld.shapes))
    assert counts.min() > 0.5 * counts.mean()
    size = cfg.toyworld.image_size
    assert train["images"].shape == (cfg.toyworld.n_train, size, size, 3) and train["images"].dtype == np.uint8


def test_captions_describe_their_images(small_world, make_cfg):
    cfg = make_cfg(base=small_world)
    train = toyworld.load_split(cfg, "train")
    named_any = {"size": 0, "background": 0}
    for i, caption in enumerate(train["captions"]):
        parsed = toy_vocabulary.parse_caption(str(caption), cfg)
        assert parsed["shape"] == train["shape"][i], caption
        assert parsed["colour"] == train["colour"][i], caption
        for attr in ("size", "background"):
            if parsed[attr] is not None:
                named_any[attr] += 1
                assert parsed[attr] == train[attr][i], caption
    assert all(v > 0 for v in named_any.values())
    # paraphrases: many distinct captions for the same attributes
    assert len(set(map(str, train["captions"]))) > 0.5 * len(train["captions"])


def _normalise(text):
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def test_raw_caption_file_has_exact_and_near_duplicates(small_world, make_cfg):
    """One row per train image, in order, with its caption from train.npz; then the configured
    fractions of extra rows, each after the row it repeats: exactly (the same string) or nearly (a
    variant that NFKC + lower case + whitespace normalise back to it)."""
    cfg = make_cfg(base=small_world)
    tw = cfg.toyworld
    clean = [str(c) for c in toyworld.load_split(cfg, "train")["captions"]]
    lines = (small_world / "data" / "toyworld" / "captions_raw.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == 2 and row[1].startswith("toy://train/") for row in rows)
    first, exact, near = {}, 0, 0
    for caption, url in rows:
        image = int(url.removeprefix("toy://train/"))
        if url not in first:
            first[url] = caption
            assert caption == clean[image], (url, caption)
        elif caption == clean[image]:
            exact += 1
        else:
            assert _normalise(caption) == _normalise(clean[image]) != caption, (url, caption)
            near += 1
    assert list(first) == [f"toy://train/{i}" for i in range(tw.n_train)]
    assert (exact, near) == (round(tw.exact_duplicate_rate * tw.n_train), round(tw.near_duplicate_rate * tw.n_train))
    assert any(any(ord(ch) > 127 for ch in caption) for caption, _ in rows)  # Unicode variants
    # the clean captions are what the dedup step keeps: normalised already
    assert all(c == _normalise(c) for c in clean)


def test_unknown_shape_is_a_config_error(make_cfg):
    with pytest.raises(ValueError, match=r"toyworld.shapes\[1\]"):
        toyworld.run(make_cfg("toyworld.shapes=[circle,hexagon]"))


def test_other_domains_leave_the_photos_unchanged_and_captions_name_them(make_cfg, tmp_path):
    with_domains = toyworld.run(make_cfg(base=tmp_path / "a"))
    # (NADA measures its shift with a classifier of the world's domains: without them it is off)
    without = toyworld.run(make_cfg("toyworld.domains=[]", "nada.enabled=false", base=tmp_path / "b"))
    # the generator's corpus and the evaluation splits are those of a world without domains
    for split in ("train", "val", "test"):
        assert _digest(with_domains[split]) == _digest(without[split])
    assert with_domains["captions"].read_bytes() == without["captions"].read_bytes()
    assert len(toyworld.load_split(tmp_path / "b" / "data" / "toyworld", "domains_train")["images"]) == 0

    cfg = make_cfg(base=tmp_path / "a")
    data = toyworld.load_split(cfg, "domains_train")
    names = list(cfg.toyworld.domains)
    assert np.bincount(data["domain"], minlength=len(names)).tolist() == [cfg.toyworld.n_domain_train] * len(names)
    for caption, domain, shape, colour in zip(data["captions"], data["domain"], data["shape"], data["colour"]):
        phrases = [t.split("{x}") for t in toy_vocabulary.DOMAIN_TEMPLATES[names[domain]]]
        assert any(caption.startswith(a) and caption.endswith(b) for a, b in phrases), caption
        named = toy_vocabulary.parse_caption(caption, cfg)
        assert (named["shape"], named["colour"], named["background"]) == (shape, colour, None), caption
    # none of the domains' words is in the toy generator's vocabulary
    domain_words = {"drawing", "sketch", "pen", "negative", "inverted", "pixelated", "pixel"}
    assert not domain_words & set(toy_vocabulary.vocabulary(cfg))


def test_domains_render_what_they_name(make_cfg):
    cfg = make_cfg()
    attrs = toy_vocabulary.Attributes(shape=0, colour=0, size=1, background=0)  # a large red circle, dark background
    seed = 7
    photo = toyworld.render(attrs, cfg, np.random.default_rng(seed))
    negative = toyworld.render(attrs, cfg, np.random.default_rng(seed), "negative")
    pixelated = toyworld.render(attrs, cfg, np.random.default_rng(seed), "pixelated")
    drawing = toyworld.render(attrs, cfg, np.random.default_rng(seed), "drawing")
    # a negative is the photo inverted: same draws, then 1 - x
    np.testing.assert_allclose(negative, 1 - photo, atol=1e-6)
    # pixelated: constant 2x2 blocks whose means are the photo's
    blocks = photo.reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(pixelated[::2, ::2], blocks, atol=1e-6)
    np.testing.assert_array_equal(pixelated[::2, ::2], pixelated[1::2, 1::2])
    # a drawing: light paper, red ink on the outline only (the circle's centre is paper)
    red = (drawing[..., 0] > 0.6) & (drawing[..., 1] < 0.4)
    assert 0.05 < red.mean() < 0.4 and np.median(drawing) > 0.8
    with pytest.raises(ValueError, match="toyworld.domains\\[0\\]"):
        toyworld.run(make_cfg("toyworld.domains=[night]"))


def test_the_two_changes_from_a_photo_to_a_drawing_render_one_at_a_time(make_cfg):
    cfg = make_cfg()
    attrs = toy_vocabulary.Attributes(shape=0, colour=0, size=1, background=0)  # a large red circle, dark background

    def render(**kw):
        return toyworld.render(attrs, cfg, np.random.default_rng(7), with_mask=True, **kw)

    photo, covered = render()
    drawing, _ = render(domain="drawing")
    np.testing.assert_array_equal(render(paper=True, outline=True)[0], drawing)
    # the outline alone: the photo's draws, so the same pixels wherever the object is not, and the
    # dark background (not red paint) inside the outline
    outlined, ring = render(outline=True)
    inside = covered & ~ring
    assert inside.sum() >= 10
    np.testing.assert_array_equal(outlined[~covered], photo[~covered])
    assert photo[inside][:, 0].mean() > 0.6 and outlined[inside].max(axis=-1).mean() < 0.35
    # paper alone: the photo's fill on a drawing's paper
    filled, _ = render(paper=True)
    border = np.concatenate([filled[0], filled[-1], filled[:, 0], filled[:, -1]])
    assert border.min() > 0.75 and photo[:, 0].max() < 0.4
    np.testing.assert_allclose(filled[inside].mean(axis=0), photo[inside].mean(axis=0), atol=0.05)
    # a number: a uniform background of that brightness instead of paper
    grey, _ = render(paper=0.5)
    np.testing.assert_allclose(grey[~covered].mean(), 0.5, atol=0.02)
    np.testing.assert_allclose(grey[inside].mean(axis=0), photo[inside].mean(axis=0), atol=0.05)


def test_background_ranges_are_config_keys_checked_at_load(make_cfg):
    from synrep.settings import ConfigError

    def borders(cfg, background):
        attrs = toy_vocabulary.Attributes(shape=0, colour=0, size=0, background=background)
        images = [toyworld.render(attrs, cfg, np.random.default_rng(i)) for i in range(40)]
        return np.array([np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]]).mean() for im in images])

    shipped = make_cfg()
    assert borders(shipped, 0).max() < 0.3 and borders(shipped, 1).min() > 0.6
    # a world whose backgrounds close the gap between dark and light: the same draws, other greys
    gapless = make_cfg("toyworld.dark_background=[0.0,0.45]", "toyworld.light_background=[0.45,0.92]")
    assert borders(gapless, 0).max() > 0.3 and borders(gapless, 1).min() < 0.6
    for bad, key in (("toyworld.dark_background=[0.5,0.2]", "toyworld.dark_background"),
                     ("toyworld.light_background=[0.6,1.2]", "toyworld.light_background"),
                     ("toyworld.light_background=[0.6]", "toyworld.light_background")):
        with pytest.raises(ConfigError, match=key):
            make_cfg(bad)
