"""A changed config never returns an old result under a new label: training into a folder that
holds another config's run refuses (naming what differs), and the sweep, which owns its run
folders, trains such a run afresh."""

from __future__ import annotations

import json

from synrep.__main__ import main
from synrep.config import load_config
from synrep.experiments import sweep, sweep_run


def _train(capsys, overrides: list[str]) -> tuple[int, str]:
    code = main(["train", *overrides])
    return code, capsys.readouterr().err


def test_train_into_a_folder_of_another_config_refuses_naming_the_keys(learning_world, tmp_path, capsys):
    out = tmp_path / "run"
    base = learning_world("train.epochs=1", f"train.output_dir={out}")
    code, _ = _train(capsys, base)
    assert code == 0
    model = out / "model.pt"
    stamp, first = model.stat().st_mtime_ns, json.loads((out / "train.json").read_text())

    # what a new user tried: the same folder, another method
    code, err = _train(capsys, base + ["train.method=simclr"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert str(out) in lines[0] and "train.method: 'stablerep' -> 'simclr'" in lines[0]
    assert model.stat().st_mtime_ns == stamp

    # another source: named by the key that differs, down to the source's own spec
    code, err = _train(capsys, base + ["train.data=w4"])
    assert code == 1 and "train.data: 'w2' -> 'w4'" in err and "source.guidance.w: 2.0 -> 4.0" in err

    # the same config: the finished run is returned as it is
    code, _ = _train(capsys, base)
    assert code == 0 and model.stat().st_mtime_ns == stamp
    assert json.loads((out / "train.json").read_text()) == first


def test_an_interrupted_run_resumes_only_under_its_own_config(learning_world, tmp_path, capsys):
    out = tmp_path / "run"
    base = learning_world("train.epochs=2", f"train.output_dir={out}", "train.checkpoint_seconds=0")
    assert _train(capsys, base)[0] == 0
    (out / "model.pt").unlink()  # as if killed after its last checkpoint
    code, err = _train(capsys, base + ["train.temperature=0.2"])
    assert code == 1 and "train.temperature: 0.1 -> 0.2" in err
    assert not (out / "model.pt").exists()


def test_the_sweep_trains_a_changed_run_afresh(learning_world):
    overrides = learning_world("sweep.grids=[{method: [simclr], data: [w2]}]", "sweep.seeds=[0]", "train.epochs=1")
    cfg = load_config(overrides)
    (spec,) = sweep.expand(cfg)
    first = json.loads(sweep_run.run_one(cfg, spec.run_id)["metrics"].read_text())
    # the same run id under a changed training budget: not the old model under the new label
    longer = load_config(overrides[:-1] + ["train.epochs=2"])
    second = json.loads(sweep_run.run_one(longer, spec.run_id)["metrics"].read_text())
    assert second["steps"] == 2 * first["steps"]
    stored = json.loads((sweep.run_output_dir(longer, spec) / "identity.json").read_text())
    assert stored["train"]["epochs"] == 2
