"""Fixtures for every test."""
import pytest


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Tests talk to 127.0.0.1 only: a proxy from the environment must not see (or break) that."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
