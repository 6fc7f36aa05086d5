"""Connecting to Ray and deciding how many replicas to run and with which resources."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from ..config import ClusterConfig


@dataclass
class ReplicaPlan:
    """How many replica actors to start and what each one reserves."""

    count: int
    use_gpu: bool
    num_gpus: float
    num_cpus: float
    torch_threads: Optional[int]


def connect(cfg: ClusterConfig) -> bool:
    """Start or join Ray unless it already runs in this process; True when this call started it.

    No address (and no ``RAY_ADDRESS``): an in-process local Ray. ``auto`` or ``ray://...``: join.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"namespace": cfg.namespace, "log_to_driver": True}
    if cfg.runtime_env:
        kwargs["runtime_env"] = dict(cfg.runtime_env)
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.address, **kwargs)
    else:  # "local": a new in-process instance even if `ray start` runs on this machine
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, **kwargs)
    return True


def plan_replicas(cfg: ClusterConfig, resources: dict[str, float]) -> ReplicaPlan:
    """Replicas = GPUs in the cluster (or 1 without GPUs) unless configured."""
    gpus = float(resources.get("GPU", 0.0))
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else gpus > 0
    if cfg.replicas is not None:
        count = cfg.replicas
    elif use_gpu:
        count = max(1, int(gpus // max(cfg.gpus_per_replica, 1e-9)))
    else:
        count = 1
    if count < 1:
        raise ValueError("cluster.replicas must be at least 1")
    threads = cfg.torch_threads if cfg.torch_threads is not None else max(1, int(cfg.cpus_per_replica))
    return ReplicaPlan(count=count, use_gpu=use_gpu, num_gpus=cfg.gpus_per_replica if use_gpu else 0.0,
                       num_cpus=cfg.cpus_per_replica, torch_threads=None if use_gpu else threads)
