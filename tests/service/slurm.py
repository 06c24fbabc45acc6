"""A throwaway single-node Slurm cluster (slurmctld + slurmd from Debian's slurm-wlm) for the executor's tests.

Its own slurm.conf in a temporary directory, free ports, `auth/none` (no munge), process tracking by process
group and no cgroups, so it runs in a plain container as root. No accounting storage: `sacct` answers that
accounting is disabled, and the executor falls back to `scontrol show job`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.service.helpers import free_port

BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
MISSING = (
    "Slurm (slurmctld, slurmd, sbatch, squeue, scontrol) not found: install Debian's slurm-wlm daemons "
    "(`apt-get install -y slurmctld slurmd slurm-client`, as .ci/run does); the daemons run as root"
)


class TemporarySlurm:
    """`with TemporarySlurm() as slurm_conf:` -> path of the cluster's slurm.conf (set SLURM_CONF to it)."""

    def __init__(self) -> None:
        if any(shutil.which(name) is None for name in BINARIES) or os.geteuid() != 0:
            raise RuntimeError(MISSING)
        self.base = Path(tempfile.mkdtemp(prefix="alignment-slurm-"))
        self.conf = self.base / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def __enter__(self) -> Path:
        host = socket.gethostname().split(".")[0]
        for folder in ("state", "spool", "log"):
            (self.base / folder).mkdir()
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=alignment-test",
                    f"SlurmctldHost={host}",
                    f"SlurmctldPort={free_port()}",
                    f"SlurmdPort={free_port()}",
                    "AuthType=auth/none",
                    "CredType=cred/none",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={self.base / 'state'}",
                    f"SlurmdSpoolDir={self.base / 'spool'}",
                    f"SlurmctldPidFile={self.base / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.base / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.base / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.base / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/pgid",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "MpiDefault=none",
                    f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
                    f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                ]
            )
            + "\n"
        )
        subprocess.run(
            ["slurmctld", "-c", "-f", str(self.conf)], env=self.env, check=True, capture_output=True
        )
        subprocess.run(["slurmd", "-f", str(self.conf)], env=self.env, check=True, capture_output=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(
                ["sinfo", "--noheader", "--format=%T"], env=self.env, capture_output=True, text=True
            )
            if state.stdout.strip() == "idle":
                return self.conf
            time.sleep(0.5)
        log = (self.base / "log" / "slurmctld.log").read_text(errors="replace")[-2000:]
        self.__exit__()
        raise RuntimeError(f"the test Slurm cluster did not come up within 60 s:\n{log}")

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True)
        for name in ("slurmd.pid", "slurmctld.pid"):
            pid_file = self.base / name
            deadline = time.time() + 15
            while pid_file.exists() and time.time() < deadline:
                time.sleep(0.2)
            if pid_file.exists():  # not shut down in time: stop it ourselves
                with contextlib.suppress(ValueError, ProcessLookupError):
                    os.kill(int(pid_file.read_text().strip()), 9)
        shutil.rmtree(self.base, ignore_errors=True)
