"""Fixtures of the real-Slurm tests: one cluster per session, a time limit per test.

Only `make test-slurm` (pytest tests_slurm) collects this folder; `make test`
collects tests/ alone (pytest.ini's testpaths), so it needs neither root nor apt.
"""
import os
import shutil
import signal

import pytest

from tests_slurm.cluster import Cluster

TEST_LIMIT = 240  # seconds one test may take, its jobs' waits included
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")


def pytest_configure(config):
    # The Makefile's `timeout` ends a run with SIGTERM: as a KeyboardInterrupt, pytest
    # still tears the session down, and so stops the daemons.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


@pytest.fixture(scope="session")
def slurm():
    """A running single-node Slurm (tests_slurm/cluster.py), stopped after the last test."""
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        why = f"{missing[0]} is not installed" if missing else "not root"
        pytest.fail(f"the real-Slurm tests need root and slurm-wlm + munge ({why}): run `make test-slurm` "
                    f"as root, which installs them", pytrace=False)
    with Cluster() as cluster:
        yield cluster


@pytest.fixture
def jobs(slurm):
    """The ids of the jobs a test submits (append them): cancelled when the test ends."""
    submitted = []
    yield submitted
    slurm.cancel(*submitted)


class TimeLimitExceeded(Exception):
    """A test ran out of its TEST_LIMIT."""


@pytest.fixture(autouse=True)
def time_limit():
    """Each test gets TEST_LIMIT seconds (SIGALRM), then fails; its fixtures still clean up."""
    def expired(signum, frame):
        raise TimeLimitExceeded(f"the test took more than {TEST_LIMIT} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_LIMIT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
