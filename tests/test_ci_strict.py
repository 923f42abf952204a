"""CI=true turns a skip (a missing install) into a failure; a ci_may_skip test may still skip."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

TESTS = '''
import pytest

def test_needs_sox():
    pytest.skip("sox not installed (apt-packages.txt)")

@pytest.mark.ci_may_skip
@pytest.mark.skipif(True, reason="a CUDA GPU is present")
def test_cpu_only():
    pass

@pytest.mark.xfail(reason="known", strict=False)
def test_known_failure():
    assert False

def test_plain():
    assert True
'''


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text(TESTS)
    env = {**os.environ, "CI": ci, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "_ci_strict", "-p", "no:cacheprovider",
                           "-o", "markers=ci_may_skip: may skip", "-rA", str(tmp_path / "test_inner.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_skip_fails_and_names_its_reason(tmp_path, ci):
    r = _run(tmp_path, ci)
    assert r.returncode == 1, r.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in r.stdout, r.stdout
    assert "FAILED" in r.stdout and "test_needs_sox" in r.stdout
    assert "skipped under CI=true: sox not installed (apt-packages.txt)" in r.stdout


def test_outside_ci_a_skip_stays_a_skip(tmp_path):
    r = _run(tmp_path, "")
    assert r.returncode == 0, r.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in r.stdout, r.stdout
