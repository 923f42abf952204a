"""Under ``CI=true`` a skipped test fails: a skip here means a package or corpus was not installed.

CI installs everything with ``install.sh``; a test that would quietly skip for a missing ``sox``,
synthesiser, unpacked prompt package or optional Python package would let a green CI hide an
untested data path. Tests whose skip does not mean "not installed" (a GPU being present, say) carry
``@pytest.mark.ci_may_skip``. Loaded by ``tests/conftest.py``; also usable as ``-p _ci_strict``.
"""
from __future__ import annotations

import os

import pytest


def ci_is_strict() -> bool:
    """True when the ``CI`` environment variable says this run is CI (``true``/``1``/``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not (rep.skipped and ci_is_strict()) or hasattr(rep, "wasxfail") or item.get_closest_marker("ci_may_skip"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    reason = reason.removeprefix("Skipped: ")
    rep.outcome = "failed"
    rep.longrepr = (f"skipped under CI=true: {reason}\n"
                    "CI must install everything this test needs (install.sh); a skip here hides an untested path. "
                    "Mark a test @pytest.mark.ci_may_skip only when its skip does not mean 'not installed'.")
