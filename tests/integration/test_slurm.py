"""Jobs through Dask on a real Slurm: ``../shared/infra/slurm-local.sh`` starts a single-node
Slurm (Debian's slurm-wlm), ``otf cluster slurm`` runs a Dask scheduler whose workers are Slurm
jobs, and the service (executor = dask) runs its batches there. Each job says which Slurm job
ran it, in its info and in its provenance."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, free_port
from tests.integration.test_uws_api import create, wait_final

OTF = Path(sys.executable).with_name("otf")


@pytest.fixture(scope="module")
def slurm(shared_dir: Path) -> Iterator[None]:
    script = shared_dir / "infra" / "slurm-local.sh"
    if os.geteuid() != 0:
        pytest.fail("a local Slurm needs root (slurm-local.sh installs and starts its daemons)")
    started = subprocess.run(
        ["bash", str(script), "start"], capture_output=True, text=True, timeout=300, check=False
    )
    assert started.returncode == 0, started.stderr[-3000:]
    yield
    subprocess.run(["bash", str(script), "stop"], capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def cluster(slurm: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("slurm-cluster")
    address_file = folder / "address"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
    log = (folder / "cluster.log").open("ab")
    proc = subprocess.Popen(
        [
            str(OTF), "cluster", "slurm", "--jobs", "1", "--memory", "2GiB",
            "--walltime", "00:20:00", "--port", str(free_port()),
            "--log-directory", str(folder / "logs"), "--address-file", str(address_file),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not address_file.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, (folder / "cluster.log").read_text()
        time.sleep(0.2)
    assert address_file.exists(), (folder / "cluster.log").read_text()
    yield address_file.read_text().strip()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert "cluster closed" in (folder / "cluster.log").read_text()


def test_jobs_run_in_slurm_jobs(cluster: str, tmp_path: Path, real_data: Path) -> None:
    squeue = shutil.which("squeue")
    assert squeue is not None
    proc = ServerProcess(tmp_path / "data", None, executor="dask", dask_address=cluster)
    proc.start(ready=False)
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            deadline = time.monotonic() + 120  # the Slurm job starts, its worker connects
            while client.get("/health/ready").status_code != 200:
                assert time.monotonic() < deadline, client.get("/health/ready").text
                time.sleep(0.5)
            image = real_data / "aegean" / "synthetic_test.fits"
            ids = [create(client, {"PHASE": "RUN", "NOCACHE": "true"}, image)]
            ids.append(
                create(
                    client, {"PHASE": "RUN", "MODEL": "matched-filter", "NOCACHE": "true"}, image
                )
            )
            docs = [wait_final(client, job_id, timeout=180) for job_id in ids]
            queue = subprocess.run(
                [squeue, "--noheader", "--format=%i %j"], capture_output=True, text=True
            ).stdout.split()
            for job_id, doc in zip(ids, docs, strict=True):
                assert doc["phase"] == "COMPLETED", doc["errorSummary"]
                slurm_job = doc["jobInfo"]["worker"]["slurm_job_id"]
                assert slurm_job.isdigit() and slurm_job in queue  # a running Slurm job
                provn = client.get(f"/jobs/{job_id}/provenance", params={"FORMAT": "provn"})
                assert f'otf:slurm_job_id="{slurm_job}"' in provn.text
    finally:
        proc.stop()


def test_a_slurm_that_does_not_answer_is_one_clear_line(slurm: None, tmp_path: Path) -> None:
    """``otf cluster slurm`` against a controller nobody runs (its own slurm.conf naming a
    port with no slurmctld): exit 1 with one line, instead of starting a cluster whose
    workers can never be submitted."""
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=localhost\n"
        f"SlurmctldPort={free_port()}\nAuthType=auth/munge\n"
        "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=debug Nodes=localhost\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
    env["SLURM_CONF"] = str(conf)
    run = subprocess.run(
        [str(OTF), "cluster", "slurm", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "the Slurm controller is not up" in lines[0], run.stderr
