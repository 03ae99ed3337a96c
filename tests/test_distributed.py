"""synrep.learning.distributed and the trainer's rank handling without a process group: the CUDA
device a task takes, and which rank clears a run folder of another config."""

from __future__ import annotations

import json
import shutil

import pytest

from synrep.learning import distributed, trainer
from synrep.learning.distributed import DistInfo


@pytest.mark.parametrize("visible, local_rank, expected", [
    (1, 0, 0), (1, 5, 0),  # --gpus-per-task=1: each task's own GPU is its device 0
    (8, 5, 5), (8, 0, 0),  # torchrun, or an srun step with the node's GPUs: one each by local rank
])
def test_cuda_index_follows_the_visible_devices(monkeypatch, visible, local_rank, expected):
    monkeypatch.setattr("torch.cuda.device_count", lambda: visible)
    assert distributed.cuda_index(local_rank) == expected


def test_cuda_index_names_a_task_without_a_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match=r"local rank 3 has no GPU of its own: this task sees 2 GPU\(s\) "
                                         r"\(CUDA_VISIBLE_DEVICES=0,1\)"):
        distributed.cuda_index(3)


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_clears_a_run_folder_of_another_config(make_cfg, tmp_path, monkeypatch, rank):
    out = tmp_path / "run"
    cfg = make_cfg(f"train.output_dir={out}")
    out.mkdir()
    (out / "model.pt").write_bytes(b"")
    (out / "identity.json").write_text(json.dumps({"train": {"method": "another"}}))
    (out / "train.json").write_text(json.dumps({"summary": "of the finished run"}))
    with pytest.raises(trainer.OtherRunError):  # the folder is another config's
        trainer.check_output_dir(cfg, out)

    removed, asked = [], []
    monkeypatch.setattr(shutil, "rmtree", lambda path, *args, **kwargs: removed.append(path))
    monkeypatch.setattr(distributed, "init_distributed", lambda device_type="cpu": DistInfo(rank, 2, rank, "slurm"))

    # rank 0's answers, as broadcast_flag hands them to every rank: the folder is not refused, and
    # (the removal being recorded, not made) its run is finished, so train() returns it
    def broadcast_flag(value):
        asked.append(value)
        return [False, True][len(asked) - 1]

    monkeypatch.setattr(distributed, "broadcast_flag", broadcast_flag)
    assert trainer.train(cfg, restart_other=True) == {"summary": "of the finished run"}
    assert removed == ([out] if rank == 0 else [])
    assert len(asked) == 2
