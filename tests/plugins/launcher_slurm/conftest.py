"""A SLURM job on this machine for the slurm launcher's tests (see slurm_job.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from slurm_job import SlurmJob


@pytest.fixture
def job(tmp_path: Path) -> SlurmJob:
    return SlurmJob(tmp_path)
