"""The scheduler launchers' ``job`` fixture: one job-on-this-machine for the slurm,
sge and torque tests, set from the data of each scheduler (scheduler_jobs.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scheduler_jobs import SCHEDULERS, SchedulerJob


@pytest.fixture
def job(request: pytest.FixtureRequest, tmp_path: Path) -> SchedulerJob:
    """A job of the scheduler whose plugin the test is in (its directory)."""
    where = request.path.parent.name
    if where not in SCHEDULERS:
        raise LookupError(
            f"no scheduler job for the tests in {where}: choose one of: {', '.join(SCHEDULERS)}"
        )
    return SchedulerJob(SCHEDULERS[where], tmp_path)
