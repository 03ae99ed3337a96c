"""torch.distributed from the launcher's environment: torchrun, SLURM (srun), or a single process.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under ``srun`` with
several tasks, SLURM sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the master is the first
node of the job and the port is derived from the job id, so every task agrees without talking.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from synrep.settings import InputError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"  # single | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list ("node[03-05,7],gpu1" -> "node03")."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.split(r",(?![^\[]*\])", nodelist)[0]
    match = re.match(r"^([^\[]+)\[([^\]-,]+)", head)
    return match.group(1) + match.group(2) if match else head


def detect() -> DistInfo:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm")
    return DistInfo()


def cuda_index(local_rank: int) -> int:
    """The CUDA device of the task with ``local_rank`` on its node. Under ``--gpus-per-task=1`` (or
    any binding that leaves one GPU in CUDA_VISIBLE_DEVICES) every task sees its own GPU as device
    0; otherwise (torchrun, ``srun`` steps that get all of the node's GPUs) the tasks of a node share
    the visible list and take one each by local rank."""
    count = torch.cuda.device_count()
    if count == 1:
        return 0
    if local_rank >= count:
        raise InputError(f"local rank {local_rank} has no GPU of its own: this task sees {count} GPU(s) "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); ask for "
                         "one GPU per task or as many GPUs per node as tasks per node")
    return local_rank


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the process group the environment describes (no-op for a single process)."""
    info = detect()
    if not info.enabled or (dist.is_available() and dist.is_initialized()):
        return info
    if info.source == "slurm":
        os.environ.setdefault("MASTER_ADDR", first_slurm_host(os.environ.get("SLURM_JOB_NODELIST", "localhost")))
        os.environ.setdefault("MASTER_PORT", str(15000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(cuda_index(info.local_rank))
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size)
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: float) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item() / dist.get_world_size())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_flag(value: bool) -> bool:
    """Rank 0's ``value`` on every rank (``value`` itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the whole batch of every rank, for process groups
    on the CPU (gloo), where ``nn.SyncBatchNorm`` refuses to run. Written by hand for that reason
    only; CUDA runs use ``nn.SyncBatchNorm``. Two differentiable all-reduces (sum and count, then
    the centred sum of squares), so the gradient flows through the global statistics as it does in
    ``nn.SyncBatchNorm``."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        var = all_reduce((x - mean.view(shape)).pow(2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1))
                self.num_batches_tracked.add_(1)
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: torch.nn.Module, device_type: str) -> torch.nn.Module:
    """Every BatchNorm of ``model`` synchronised across ranks, as the official head's SyncBatchNorm:
    ``nn.SyncBatchNorm`` on CUDA, ``GlobalBatchNorm`` on the CPU. A no-op in a single process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model
    if device_type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: torch.nn.Module) -> torch.nn.Module:
        out = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
            out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
            # the same Parameter and buffer objects (as convert_sync_batchnorm): an optimizer built
            # before the conversion still updates them
            if module.affine:
                out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, convert(child))
        return out

    return convert(model)


def wrap_model(model: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """Synchronised BatchNorm and DistributedDataParallel when the run has several ranks."""
    if not info.enabled:
        return model
    model = sync_batchnorm(model, device.type)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
