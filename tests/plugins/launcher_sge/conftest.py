"""A Grid Engine parallel job on this machine for the sge launcher's tests (see sge_job.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sge_job import SgeJob


@pytest.fixture
def job(tmp_path: Path) -> SgeJob:
    return SgeJob(tmp_path)
