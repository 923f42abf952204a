"""Shared fixtures and settings for the slimtrain test suite."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

from _ci_strict import pytest_runtest_makereport  # noqa: F401  (CI=true: a skip fails)

settings.register_profile(
    "slimtrain",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.differing_executors],
    print_blob=True,
)
settings.load_profile("slimtrain")
torch.set_num_threads(1)


def pytest_configure(config):
    # torch.backends.mkldnn.flags() warns about Intel GPUs on every CPU build
    config.addinivalue_line("filterwarnings", "ignore:TF32 acceleration:UserWarning")
    config.addinivalue_line("markers", "ci_may_skip: the test's skip does not mean a missing install, so CI=true lets it skip")


@pytest.fixture
def zero_noise(monkeypatch):
    """DCL noise ``nu`` replaced by zeros (the noise-free part of the output)."""
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.zeros_like(t, **kw))


@pytest.fixture
def unit_noise(monkeypatch):
    """DCL noise ``nu`` replaced by ones (so the noise term equals its weight times sigma)."""
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.ones_like(t, **kw))
