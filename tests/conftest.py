"""Fixtures for every test."""
import logging
import os

import pytest


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Tests talk to 127.0.0.1 only: a proxy from the environment must not see (or break) that."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def entry_state():
    """Undo what an entry point run in this process sets globally (log level, env)."""
    level, env = logging.getLogger().level, dict(os.environ)
    yield
    logging.getLogger().setLevel(level)
    os.environ.clear()
    os.environ.update(env)
