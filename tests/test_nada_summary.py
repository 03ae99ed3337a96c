"""scripts/nada_summary.py: each run's last step, per variant the mean and t-interval over its runs,
and one line naming a folder that holds no measurement."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from scipy import stats

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "nada_summary.py"


def write_run(folder, shares):
    rows = [{"kind": "baseline", "step": None, "target_fraction": 0.9}]
    rows += [{"kind": "adapted", "step": 20 * i, "target_fraction": s, "kept_shape": 1.0, "kept_colour": 1.0 - s / 2,
              "diversity": 0.4, "clip_direction": 0.5, "domain_none": 0.0} for i, s in enumerate(shares)]
    (folder / "quality").mkdir(parents=True)
    (folder / "quality" / "nada_quality.json").write_text(json.dumps({"rows": rows}))


def test_the_variant_cell_is_the_mean_and_t_interval_of_its_runs_last_steps(tmp_path):
    lasts = [0.25, 0.5, 0.625]
    for i, last in enumerate(lasts):
        write_run(tmp_path / f"s{i}", [0.0, 0.1, last])
    out = subprocess.run([sys.executable, str(SCRIPT), *[f"v=s{i}" for i in range(3)]], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    mean = np.mean(lasts)
    half = stats.t.ppf(0.975, 2) * np.std(lasts, ddof=1) / np.sqrt(3)
    variant_row = [line for line in out.splitlines() if line.startswith("| v | 3 |")]
    assert len(variant_row) == 1
    assert variant_row[0].split("|")[3].strip() == f"{mean:.3f} ± {half:.3f}"  # target_fraction
    # the baseline row is not a run's step; each run's own last step is in the first table
    assert out.count("| v | s") == 3 and "| 40 | 0.625 |" in out


def test_a_folder_without_a_measurement_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), f"v={tmp_path}/missing"], capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "nada_quality.json" in result.stderr and "missing" in result.stderr


def test_runs_in_folders_of_the_same_name_stay_apart(tmp_path):
    """Two seeds' NADA folders are both called ``nada`` (<results>/<name>/nada): each is its own run."""
    write_run(tmp_path / "s0" / "nada", [0.0, 0.25])
    write_run(tmp_path / "s1" / "nada", [0.0, 0.75])
    out = subprocess.run([sys.executable, str(SCRIPT), "v=s0/nada", "v=s1/nada"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    variant_row = [line for line in out.splitlines() if line.startswith("| v | ")][-1]
    assert variant_row.split("|")[2].strip() == "2"
    assert variant_row.split("|")[3].strip().startswith("0.500 ± ")
