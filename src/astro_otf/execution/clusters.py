"""Dask clusters on batch systems, for ``otf cluster``: a Dask scheduler in this process and
Dask workers submitted as batch jobs by dask-jobqueue.

The service itself only needs a scheduler address (``executor = "dask"``, ``dask_address``);
this module is the supported way to get one on a Slurm site (PBS and HTCondor work the same
way through dask-jobqueue's PBSCluster and HTCondorCluster, see docs/deployment.md). Every
worker process runs one batch at a time (one thread), as the local executor does, so a model's
warm sessions are never shared between threads. The scheduler retries a batch once after a
lost worker (``allowed-failures = 1``), which the service reports as an ERROR after that.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SlurmOptions", "SlurmUnavailable", "check_slurm", "slurm_cluster"]


@dataclass(frozen=True)
class SlurmOptions:
    """What each Slurm job of Dask workers asks for."""

    jobs: int = 1
    processes: int = 1  # worker processes per Slurm job (one thread each)
    memory: str = "4GiB"
    walltime: str = "01:00:00"
    queue: str | None = None  # partition
    account: str | None = None
    resources: dict[str, float] = field(default_factory=dict)  # Dask resources, e.g. GPU=1
    gres: str | None = None  # e.g. gpu:1, passed to sbatch --gres
    host: str = "127.0.0.1"  # where the scheduler listens (an address the nodes reach)
    port: int = 8786
    python: str = sys.executable
    log_directory: str | None = None
    prologue: tuple[str, ...] = ()  # shell lines run before the worker starts


class SlurmUnavailable(RuntimeError):
    """Slurm's commands are missing or its controller does not answer."""


def check_slurm() -> None:
    """Raise :class:`SlurmUnavailable` with one clear line unless ``scontrol ping`` says the
    controller is up (dask-jobqueue would otherwise fail later, in the background)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None or shutil.which("sbatch") is None:
        raise SlurmUnavailable("Slurm's commands (sbatch, scontrol) are not installed here")
    try:
        ping = subprocess.run(
            [scontrol, "ping"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(
            "the Slurm controller did not answer scontrol ping in 30 s"
        ) from None
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        said = [line for line in (ping.stdout + ping.stderr).splitlines() if "Slurmctld" in line]
        raise SlurmUnavailable(
            "the Slurm controller is not up (scontrol ping: "
            f"{said[0].strip() if said else 'no answer'})"
        )


def slurm_cluster(options: SlurmOptions) -> Any:
    """A started dask-jobqueue SLURMCluster, scaled to ``options.jobs`` Slurm jobs."""
    import dask
    from dask_jobqueue.slurm import SLURMCluster  # where it is defined: not re-exported

    resources = [f"{k}={v:g}" for k, v in sorted(options.resources.items())]
    extra_args = ["--resources", ",".join(resources)] if resources else []
    directives = [f"--gres={options.gres}"] if options.gres else []
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        # Any: dask-jobqueue's cluster methods (scale) are untyped
        cluster: Any = SLURMCluster(
            queue=options.queue,
            account=options.account,
            cores=options.processes,
            processes=options.processes,
            memory=options.memory,
            walltime=options.walltime,
            job_name="otf-dask-worker",
            python=options.python,
            worker_extra_args=extra_args,
            job_extra_directives=directives,
            job_script_prologue=list(options.prologue),
            log_directory=options.log_directory,
            scheduler_options={
                "host": options.host,
                "port": options.port,
                "dashboard_address": None,
            },
        )
    cluster.scale(jobs=options.jobs)
    return cluster
