"""A Torque job on this machine for the torque launcher's tests (see torque_job.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torque_job import TorqueJob


@pytest.fixture
def job(tmp_path: Path) -> TorqueJob:
    return TorqueJob(tmp_path)
