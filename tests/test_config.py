import json
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
    # config/config.yaml overrides the dataclass defaults, key by key
    embedded = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert cfg.generation.guidance_scales == [float(w) for w in embedded["generation"]["guidance_scales"]]
    assert cfg.train.augment.crop_scale == embedded["train"]["augment"]["crop_scale"]
    assert cfg.train.augment.color_jitter == [0.4, 0.4, 0.4, 0.1]  # not in the file: the default


@pytest.mark.parametrize(
    "override, key",
    [
        ("generation.no_such_key=1", "generation.no_such_key"),
        ("generator.model.blocks=[1]", "generator.model.blocks"),
        ("toyworld.n_train=many", "toyworld.n_train"),
        ("generation.sampler=euler_ancestral_magic", "generation.sampler"),
        ("generation.guidance_scales=[0.5,2]", "generation.guidance_scales[0]"),
        ("toyworld.near_duplicate_rate=1.5", "toyworld.near_duplicate_rate"),
        ("generation.steps=0", "generation.steps"),
    ],
)
def test_bad_key_or_value_names_the_dotted_path(override, key):
    with pytest.raises(ConfigError) as err:
        load_config([override])
    assert f"'{key}'" in str(err.value)


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


def test_cli_reports_bad_key_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "synrep", "config", "generation.stepz=3"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "generation.stepz" in proc.stderr and "Traceback" not in proc.stderr
