"""A Hydra launcher that runs each job of a multirun in a fresh Python process, one GPU per job.

Hydra does not assign GPUs, and launchers that reuse worker processes cannot change ``CUDA_VISIBLE_DEVICES`` once
CUDA has started in a worker. This one starts a new interpreter per job with ``CUDA_VISIBLE_DEVICES`` set to the GPU
of the slot that runs it: ``gpus=[0,1,2,3]`` gives four slots, so four jobs run at a time, one per GPU (an entry may
also name several GPUs, ``"0,1"``). With no GPUs listed, ``n_jobs`` slots run jobs with the environment unchanged
(on the CPU, for example). Each job runs through Hydra's own ``run_job`` in its child, so job dirs, ``.hydra/``, logs
and callbacks are those of any launcher; the parent waits for them all and returns their results to the sweeper.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


class LocalGPUsLauncher(Launcher):
    def __init__(self, gpus: Sequence[Any] = (), n_jobs: int | None = None, poll_s: float = 0.2) -> None:
        super().__init__()
        self.gpus = [str(g) for g in (gpus or [])]
        self.n_jobs = int(n_jobs) if n_jobs else max(1, len(self.gpus))
        self.poll_s = float(poll_s)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def slot_env(self, slot: int) -> dict[str, str]:
        """The environment of a job run in ``slot``: slot k gets ``gpus[k % len(gpus)]``."""
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        where = f"on GPU(s) {self.gpus}" if self.gpus else "without GPU assignment"
        log.info(f"Launching {len(job_overrides)} jobs in fresh processes, {self.n_jobs} at a time {where}")
        function = getattr(self.task_function, "__wrapped__", self.task_function)
        task_ref = (function.__module__, function.__qualname__)
        queue = []
        with tempfile.TemporaryDirectory(prefix=".launcher-", dir=sweep_dir) as tmp:
            for k, overrides in enumerate(job_overrides):
                idx = initial_job_idx + k
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = idx
                    sweep_config.hydra.job.num = idx
                payload = Path(tmp) / f"job-{idx}.pkl"
                with open(payload, "wb") as fh:
                    # Resolvers are closures that pickle cannot carry; the child registers Hydra's own again.
                    singletons = Singleton.get_state()["instances"]
                    pickle.dump({"config": sweep_config, "task": task_ref, "singletons": singletons}, fh)
                queue.append((idx, list(overrides), payload))
            return self._run_all(queue)

    def _run_all(self, queue: list[tuple[int, list[str], Path]]) -> list[JobReturn]:
        results: dict[int, JobReturn] = {}
        running: dict[int, tuple[subprocess.Popen, int, list[str], Path]] = {}
        pending = list(queue)
        while pending or running:
            for slot in range(self.n_jobs):
                if slot not in running and pending:
                    idx, overrides, payload = pending.pop(0)
                    cmd = [sys.executable, "-m", "hydra_plugins.audioldm2_fast_launcher.child", str(payload)]
                    env = self.slot_env(slot)
                    if self.gpus:
                        log.info(f"\t#{idx} starts with CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}")
                    running[slot] = (subprocess.Popen(cmd, env=env), idx, overrides, payload)
            time.sleep(self.poll_s)
            for slot, (proc, idx, overrides, payload) in list(running.items()):
                if proc.poll() is not None:
                    results[idx] = self._result(proc.returncode, overrides, payload)
                    del running[slot]
        return [results[idx] for idx, _, _ in queue]

    @staticmethod
    def _result(returncode: int, overrides: list[str], payload: Path) -> JobReturn:
        out = payload.with_suffix(".ret")
        if out.is_file():
            with open(out, "rb") as fh:
                return pickle.load(fh)
        ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
        ret.return_value = RuntimeError(f"job process exited with code {returncode} before it finished")
        return ret
