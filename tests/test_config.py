import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synrep.config import ConfigError, json_schema, load_config, save_resolved, to_dict
from tests.conftest import REPO


def test_defaults_load_and_resolve():
    cfg = load_config()
    assert cfg.name == "toy"
    assert cfg.captions.path == "data/toyworld/captions_raw.tsv"  # interpolation resolved
    # config/config.yaml gives the dataclass defaults' values, key by key
    embedded = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert cfg.generation.steps == embedded["generation"]["steps"]
    assert {name: s.guidance.w for name, s in cfg.sources.items() if "guidance" in embedded["sources"][name]} == {
        name: s["guidance"]["w"] for name, s in embedded["sources"].items() if "guidance" in s}
    assert [cfg.sources[name].captions for name in cfg.sample_quality.sources] == [32, 32, 32, 32]
    assert cfg.train.augment.crop_scale == embedded["train"]["augment"]["crop_scale"]
    assert cfg.train.augment.color_jitter == [0.4, 0.4, 0.4, 0.1]  # not in the file: the default


def leaves(tree, prefix=""):
    """Every leaf of a nested mapping as (dotted key, value); lists are leaves."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, tree


def test_dataclass_defaults_are_the_shipped_config():
    """The sections' defaults and config/config.yaml say the same, so that a reader of either (or of
    config/README.md, made from the defaults) sees what the default run does."""
    from omegaconf import OmegaConf

    from synrep.config import Config

    defaults = dict(leaves(OmegaConf.to_container(OmegaConf.structured(Config))))
    shipped = dict(leaves(OmegaConf.to_container(load_config())))
    assert len(defaults) > 300
    differ = {key: (defaults.get(key, "missing"), shipped.get(key, "missing"))
              for key in defaults.keys() | shipped.keys()
              if key not in defaults or key not in shipped or defaults[key] != shipped[key]
              or type(defaults[key]) is not type(shipped[key])}
    assert differ == {}, "dataclass default vs config/config.yaml"
    # and the file sets each value it names to something a reader can check against the dataclass
    embedded = dict(leaves(yaml.safe_load((REPO / "config" / "config.yaml").read_text())))
    assert embedded["generation.sampler"] == defaults["generation.sampler"] == "dpmsolver"
    assert embedded["threads"] == defaults["threads"] == 1


@pytest.mark.parametrize(
    "override, key",
    [
        ("generation.no_such_key=1", "generation.no_such_key"),
        ("toy_generator.model.blocks=[1]", "toy_generator.model.blocks"),
        ("toyworld.n_train=many", "toyworld.n_train"),
        ("generation.sampler=euler_ancestral_magic", "generation.sampler"),
        ("sources.w2.guidance.w=0.5", "sources.w2.guidance.w"),
        ("sources.w2.guidance.w=[2,2]", "sources.w2.guidance.w"),
        ("sources.w2.guidance.w=[]", "sources.w2.guidance.w"),
        ("sources.w2.guidance.w=high", "sources.w2.guidance.w"),
        ("sources.w2.guidance.kind=clip_magic", "sources.w2.guidance.kind"),
        ("sources.w2.mode=video", "sources.w2.mode"),
        ("sources.w2.sampler=magic", "sources.w2.sampler"),
        ("sources.w2.stepz=3", "sources.w2.stepz"),
        ("sources.w2.captions=0", "sources.w2.captions"),
        ("sources.w2.prompts=no/such/file.txt", "sources.w2.prompts"),
        ("sources.inpaint.prompts=config/prompts/toy_class_contexts.txt", "sources.inpaint.prompts"),
        ("sources.u.mode=union", "sources.u.union"),
        ("sources.w2.union=[w8]", "sources.w2.union"),
        ("sources.u.mode=union sources.u.union=[w2,w3]", "sources.u.union[1]"),
        ("sources.u.mode=union sources.u.union=[w2,w2]", "sources.u.union[1]"),
        ("sources.u.mode=union sources.u.union=[w2,v] sources.v.mode=union sources.v.union=[w8]", "sources.u.union[1]"),
        ("sources.u.mode=union sources.u.union=[w2,w8] sources.w8.l=2", "sources.u.union"),
        ("dreambooth.probe.sources=[w3]", "dreambooth.probe.sources[0]"),
        ("sample_quality.sources=[w3]", "sample_quality.sources[0]"),
        ("sources.real.guidance.w=2", "sources.real"),
        ("train.data=w5", "train.data"),
        ("toyworld.near_duplicate_rate=1.5", "toyworld.near_duplicate_rate"),
        ("generation.steps=0", "generation.steps"),
    ],
)
def test_bad_key_or_value_names_the_dotted_path(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(override.split())
    assert f"'{key}'" in str(err.value)


def just_outside(meta, tp):
    """A value the field's metadata rules out, or None when it declares no constraint."""
    if "choices" in meta:
        return "not_a_choice"
    step = 1 if tp is int else 0.5
    for name, value in (("gt", lambda b: b), ("ge", lambda b: b - step), ("lt", lambda b: b), ("le", lambda b: b + step)):
        if name in meta:
            return value(meta[name])
    return None


def declared_constraints():
    """(dotted key, value just outside) for every field with bounds or choices, entries of a map or
    list of sections reached through the default run's first entry."""
    import dataclasses
    import typing

    from synrep.config import Config
    from synrep.settings import inner_type

    found = []

    def visit(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = inner_type(hints[f.name])
            args = typing.get_args(tp)
            if dataclasses.is_dataclass(tp):
                visit(tp, f"{prefix}{f.name}.")
            elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):
                visit(args[1], f"{prefix}{f.name}.w2.")
            elif typing.get_origin(tp) is list and dataclasses.is_dataclass(args[0]):
                visit(args[0], f"{prefix}{f.name}[0].")
            else:
                listed = typing.get_origin(tp) is list
                bad = just_outside(f.metadata, args[0] if listed else tp)
                if bad is not None:
                    found.append((f"{prefix}{f.name}", [bad] if listed else bad))

    visit(Config, "")
    return found


def test_every_declared_bound_and_choice_is_enforced():
    """One validator reads the metadata: a value just outside any field's bounds or choices fails
    with that key, a value on the bound passes."""
    import copy

    from omegaconf import OmegaConf

    from synrep.config import Config
    from synrep.settings import check_tree

    cfg = load_config()
    cases = declared_constraints()
    assert len(cases) > 80
    not_enforced = []
    for key, bad in cases:
        if "[" in key:  # inside a list of sections: from_dotlist cannot say it
            trial = copy.deepcopy(cfg)
            OmegaConf.update(trial, key, bad, merge=False)
        else:
            trial = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}={bad}".replace("'", "")]))
        try:
            check_tree(trial, Config)
        except ConfigError as err:
            where = f"'{key}[0]'" if isinstance(bad, list) else f"'{key}'"
            if where not in str(err):
                not_enforced.append((key, str(err)))
        else:
            not_enforced.append((key, "loaded"))
    assert not_enforced == []
    # on the bound itself: allowed where the bound is inclusive
    check_tree(OmegaConf.merge(cfg, OmegaConf.from_dotlist(["toyworld.near_duplicate_rate=1", "train.checkpoint_seconds=0",
                                                            "sources.w2.filter.min_score=100"])), Config)


def test_bad_key_in_experiment_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config([f"experiment={bad}"])
    assert str(bad) in str(err.value) and "generation.stepz" in str(err.value)


def test_experiment_files_all_load():
    for path in sorted((REPO / "config" / "experiment").glob("*.yaml")):
        load_config([f"experiment={path.stem}"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(["generation.steps=7", f"paths.results_dir={tmp_path}"])
    path = save_resolved(cfg, tmp_path)
    again = load_config(config_file=path)
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load(path.read_text())["generation"]["steps"] == 7


def test_schema_file_matches_dataclasses():
    stored = json.loads((REPO / "workflow" / "schemas" / "config.schema.json").read_text())
    assert stored == json_schema(), "regenerate: python -m synrep schema > workflow/schemas/config.schema.json"


def test_schema_holds_the_bounds_and_choices_the_validator_enforces():
    """Snakemake validates its --config against the schema: the same values fail there as at load."""
    import jsonschema

    schema = json_schema()
    every_file = [yaml.safe_load((REPO / "config" / "config.yaml").read_text())] + [
        yaml.safe_load(path.read_text()) for path in sorted((REPO / "config" / "experiment").glob("*.yaml"))]
    for config in every_file:  # the shipped files pass (interpolations too)
        config.pop("extends", None)
        jsonschema.validate(config, schema)
    for bad, key in [({"generation": {"sampler": "heun"}}, "generation.sampler"),
                     ({"toy_inpaint": {"steps": 0}}, "toy_inpaint.steps"),
                     ({"nada": {"clip_model_weights": [1.0, -1.0]}}, "nada.clip_model_weights"),
                     ({"sweep": {"grids": [{"method": ["simclr", "byol"]}]}}, "sweep.grids[0].method[1]"),
                     ({"train": {"method": "byol"}}, "train.method")]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config([f"{k}={v}" for k, v in _dotted(bad)])


def _dotted(tree, prefix=""):
    """key=value items of a nested mapping (lists as OmegaConf writes them)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", json.dumps(value).replace('"', "")


def test_cli_reports_bad_key_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "synrep", "config", "generation.stepz=3"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "generation.stepz" in proc.stderr and "Traceback" not in proc.stderr


def test_a_mixed_set_of_scales_is_one_config_line():
    cfg = load_config(["sources.mixed.guidance.w=[2,3,4,5,6,8,10,12]", "train.data=mixed"])
    assert list(cfg.sources.mixed.guidance.w) == [2, 3, 4, 5, 6, 8, 10, 12]


def _installed_config(cwd: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "synrep", "config"], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_configs_come_from_the_working_tree_not_the_install(tmp_path):
    """A non-editable install (a wheel's files on the path) and a venv shared by two clones both
    read config/ of the directory they run in."""
    import os
    import zipfile

    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheel_dir.glob("synrep-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert not (site / "config").exists()
    for name, steps in (("clone_a", 11), ("clone_b", 23)):
        clone = tmp_path / name
        (clone / "config").mkdir(parents=True)
        text = (REPO / "config" / "config.yaml").read_text().replace("  steps: 10\n", f"  steps: {steps}\n", 1)
        (clone / "config" / "config.yaml").write_text(text)
        # the wheel's files first on the path: the package is not the checkout's src/
        env = {**os.environ, "PYTHONPATH": str(site)}
        env.pop("SYNREP_CONFIG_DIR", None)
        assert _installed_config(clone, env)["generation"]["steps"] == steps
        # the editable install of this checkout, run from another clone
        env.pop("PYTHONPATH")
        assert _installed_config(clone, env)["generation"]["steps"] == steps


def test_no_config_folder_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "synrep", "config"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(tmp_path / "config" / "config.yaml") in proc.stderr


def test_schedule_extends_and_method_settings(tmp_path, monkeypatch):
    """A named schedule sits above its experiment file and below the command line; ``extends``
    loads the parent experiment first; ``train.by_method`` reaches only its method's runs."""
    from synrep.learning.settings import method_train

    folder = tmp_path / "config"
    (folder / "experiment").mkdir(parents=True)
    (folder / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    (folder / "experiment" / "parent.yaml").write_text(
        "name: parent\nschedule: short\nschedules:\n  short: {epochs: 3, warmup_epochs: 0.5}\n"
        "  long: {epochs: 9, by_method: {clip: {epochs: 30}}}\ntrain:\n  by_method: {clip: {lr: 5.0e-4}}\n")
    (folder / "experiment" / "child.yaml").write_text("extends: parent\nname: child\n")
    (folder / "experiment" / "loop.yaml").write_text("extends: loop\n")
    monkeypatch.setenv("SYNREP_CONFIG_DIR", str(folder))
    cfg = load_config(["experiment=child"])
    assert (cfg.name, cfg.train.epochs, cfg.train.warmup_epochs) == ("child", 3, 0.5)
    assert load_config(["experiment=child", "schedule=long"]).train.epochs == 9
    assert load_config(["experiment=child", "train.epochs=7"]).train.epochs == 7  # the command line wins
    long = load_config(["experiment=child", "schedule=long", "train.method=clip"])
    clip = method_train(long).train
    assert (clip.epochs, clip.lr) == (30, 5e-4)
    assert method_train(load_config(["experiment=child", "schedule=long"])).train.lr is None
    with pytest.raises(ConfigError, match="cycle"):
        load_config(["experiment=loop"])
