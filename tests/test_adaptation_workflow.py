"""experiment=toy_adaptation as Snakemake plans it: both DreamBooth variants, their table, NADA with
its domain classifier and measurement, the target-domain world that StableRep is evaluated on, and
a source that trains on the adapted generator (it waits for train_nada); the default run plans the
smallest form of each stage."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_toy_adaptation_plans_every_stage_and_the_adapted_source_waits_for_nada(tmp_path):
    paths = f"paths={{data_dir: {tmp_path}/data, results_dir: {tmp_path}/results}}"
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", "experiment=toy_adaptation", paths],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", done.stdout, re.M)}
    assert {k: counts.get(k) for k in ("train_dreambooth", "dreambooth_quality", "domain_classifier", "train_nada",
                                       "nada_quality", "nada_target_world", "toyworld", "subject_probe",
                                       "index_source")} == {
        "train_dreambooth": 2, "dreambooth_quality": 1, "domain_classifier": 1, "train_nada": 1,
        "nada_quality": 1, "nada_target_world": 1, "toyworld": 1, "subject_probe": 1,
        # w2, nada, the DreamBooth subject (two fine-tunes) and its control, and their unions with w2
        "index_source": 8}
    # source nada trains on what rule train_nada writes (so its shards wait for it and rerun after it)
    from pathlib import Path

    from synrep.config import load_config

    cfg = load_config(["experiment=toy_adaptation", f"paths.results_dir={tmp_path}/results"])
    assert cfg.sources.nada.generator == str(Path(cfg.nada.output_dir) / "generator")
    assert cfg.eval.root == cfg.nada.target_world
    # DreamBooth's table also scores with a StableRep encoder the study trains: the sweep names that run
    from synrep.experiments import sweep

    assert Path(cfg.dreambooth.quality.encoder).name in {spec.run_id for spec in sweep.expand(cfg)}
    # the default run plans the smallest form of each stage (not the domain-shift study), toy_core none
    default = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", paths],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert default.returncode == 0, default.stderr[-3000:]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", default.stdout, re.M)}
    assert {k: counts.get(k) for k in ("train_dreambooth", "dreambooth_quality", "train_nada", "nada_quality",
                                       "nada_target_world")} == {
        "train_dreambooth": 2, "dreambooth_quality": 1, "train_nada": 1, "nada_quality": 1, "nada_target_world": None}
    core = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", "experiment=toy_core", paths],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert core.returncode == 0, core.stderr[-3000:]
    assert not re.search(r"^(train_dreambooth|train_nada|nada_quality)\s+\d+$", core.stdout, re.M)
