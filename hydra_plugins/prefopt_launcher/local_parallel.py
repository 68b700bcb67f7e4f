"""Run a Hydra sweep's jobs in parallel on this machine, each in a fresh process of its own.

    python -m prefopt.train -m hydra/launcher=local_parallel hydra.launcher.n_jobs=2 loss=dpo,ipo beta=0.1,0.5

Why not hydra-joblib-launcher: loky shares one pool among all jobs, and a worker that dies outright (SIGKILL,
the OOM killer) breaks the pool, so every job not yet finished is lost and the sweep ends with
``TerminatedWorkerError``. Here each job is its own spawned process, watched by a thread of the launcher: a job
that dies is recorded as failed with the signal that ended it (Hydra's ``on_job_end`` callbacks run for it in
the launcher, so ``sweep.json`` says so), and the other jobs go on. A fresh interpreter per job also means no
state (threads, CUDA context, torch settings) leaks from one job into the next.

GPUs: ``hydra.launcher.gpus_per_job=N`` gives each running job its own N devices through
``CUDA_VISIBLE_DEVICES``, taken from the devices this launcher sees (an outer ``CUDA_VISIBLE_DEVICES`` is
respected: its entries are what gets divided). At most ``devices // N`` jobs run at once, whatever ``n_jobs``
says, so two jobs never share a device; the others wait for a slice to come free. 0 (the default) leaves the
environment alone: every job sees every device.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from prefopt.errors import ConfigError

log = logging.getLogger(__name__)


class LauncherConfigError(ConfigError, CompactHydraException):
    """A launcher setting that cannot work; Hydra prints a compact exception as its one-line message."""


class JobKilled(RuntimeError):
    """A sweep job's process ended without returning (killed by a signal or exited abruptly)."""


def _job_config(hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str], idx: int) -> DictConfig:
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    return sweep_config


def visible_devices() -> list[str]:
    """The CUDA devices this process may hand out: an outer CUDA_VISIBLE_DEVICES's entries (indices or UUIDs,
    as given), else the indices of every device torch counts."""
    outer = os.environ.get("CUDA_VISIBLE_DEVICES")
    if outer is not None:
        return [d.strip() for d in outer.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def device_slices(gpus_per_job: int, devices: list[str]) -> list[str]:
    """Disjoint CUDA_VISIBLE_DEVICES values of ``gpus_per_job`` devices each; leftover devices stay idle."""
    if gpus_per_job > len(devices):
        raise LauncherConfigError(
            f"hydra.launcher.gpus_per_job={gpus_per_job}: only {len(devices)} CUDA device(s) visible"
            f"{' (CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'] + ')' if 'CUDA_VISIBLE_DEVICES' in os.environ else ''}")
    return [",".join(devices[i:i + gpus_per_job])
            for i in range(0, len(devices) - gpus_per_job + 1, gpus_per_job)]


def _child(payload: bytes, conn, cuda_devices: str | None = None) -> None:
    """Entry point of a job's process: run the job the way Hydra's own launchers do, send back its JobReturn."""
    if cuda_devices is not None:
        # Before unpickling the task, whose imports may initialise CUDA.
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_devices
    import cloudpickle
    from hydra.core.hydra_config import HydraConfig

    idx, overrides, hydra_context, config, task_function, singleton_state = cloudpickle.loads(payload)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = _job_config(hydra_context, config, overrides, idx)
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    try:
        data = cloudpickle.dumps(ret)
    except Exception as err:  # noqa: BLE001 - an unpicklable return value must not lose the job's status
        value = ret._return_value
        ret._return_value = RuntimeError(f"{type(value).__name__}: {value} (not picklable: {err})")
        data = cloudpickle.dumps(ret)
    conn.send_bytes(data)
    conn.close()


def _signal_name(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class LocalParallelLauncher(Launcher):
    def __init__(self, n_jobs: int = 2, start_method: str = "spawn", gpus_per_job: int = 0) -> None:
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.launcher.n_jobs must be >= 1, got {n_jobs}")
        if int(gpus_per_job) < 0:
            raise ValueError(f"hydra.launcher.gpus_per_job must be >= 0, got {gpus_per_job}")
        self.n_jobs = int(n_jobs)
        self.gpus_per_job = int(gpus_per_job)
        # spawn: a forked child would inherit the launcher's threads and torch state.
        self.start_method = start_method
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self._callback_lock = threading.Lock()
        self._live: set = set()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import cloudpickle

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        # Checked before any job starts (or the sweep directory is made).
        slices: queue.Queue | None = None
        n_jobs = self.n_jobs
        if self.gpus_per_job:
            free = device_slices(self.gpus_per_job, visible_devices())
            if len(free) < n_jobs:
                log.info("hydra.launcher.gpus_per_job=%d: %d device slice(s), so %d jobs run at once, not %d",
                         self.gpus_per_job, len(free), len(free), n_jobs)
                n_jobs = len(free)
            slices = queue.Queue()
            for devices in free:
                slices.put(devices)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs, %d at a time, each in its own process; sweep output dir: %s",
                 len(job_overrides), n_jobs, sweep_dir)
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
        singleton_state = Singleton.get_state()
        context = multiprocessing.get_context(self.start_method)

        def run_one(idx: int, overrides: Sequence[str]) -> JobReturn:
            payload = cloudpickle.dumps((idx, list(overrides), self.hydra_context, self.config,
                                         self.task_function, singleton_state))
            # Never blocks: at most as many jobs run as there are slices, and each gives its own back.
            devices = slices.get() if slices is not None else None
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(payload, send, devices), name=f"prefopt-job-{idx}")
            try:
                process.start()
                self._live.add(process)
                send.close()  # so that recv sees EOF when the child dies without sending
                try:
                    data = receive.recv_bytes()
                except EOFError:
                    data = None
                finally:
                    process.join()
                    self._live.discard(process)
                    receive.close()
            finally:
                if slices is not None:
                    slices.put(devices)
            if data is not None:
                return cloudpickle.loads(data)
            return self._killed(idx, overrides, process)

        with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="prefopt-launcher") as pool:
            futures = [pool.submit(run_one, initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                for process in list(self._live):
                    process.terminate()
                raise

    def _killed(self, idx: int, overrides: Sequence[str], process) -> JobReturn:
        """The JobReturn of a job whose process died; Hydra's on_job_end callbacks are run here for it."""
        assert self.config is not None and self.hydra_context is not None
        error = JobKilled(f"process {process.pid} ended by {_signal_name(process.exitcode)} without reporting "
                          "(SIGKILL: out of memory or killed by hand; a segfault is SIGSEGV)")
        log.error("Job #%d (%s): %s", idx, " ".join(filter_overrides(overrides)), error)
        sweep_config = _job_config(self.hydra_context, self.config, overrides, idx)
        with open_dict(sweep_config):
            subdir = OmegaConf.select(sweep_config, "hydra.sweep.subdir")
            sweep_config.hydra.runtime.output_dir = str((Path(sweep_config.hydra.sweep.dir) / str(subdir)).resolve())
        task_cfg = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
        ret = JobReturn(overrides=list(overrides), cfg=task_cfg, hydra_cfg=sweep_config,
                        working_dir=sweep_config.hydra.runtime.output_dir, task_name=sweep_config.hydra.job.name,
                        status=JobStatus.FAILED, _return_value=error)
        with self._callback_lock:
            self.hydra_context.callbacks.on_job_end(config=sweep_config, job_return=ret)
        return ret
