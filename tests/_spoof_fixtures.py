"""Session-scoped quick anti-spoofing data set shared by the tests/test_spoof_*.py files."""
from __future__ import annotations

import shutil

import pytest

from slimtrain.tasks.spoof.data import SpoofDataConfig, build_dataset, load_split

NEEDED = ("espeak-ng", "flite", "festival")


def programs_missing() -> list[str]:
    return [p for p in NEEDED if shutil.which(p) is None]


_BUILT: dict = {}


@pytest.fixture(scope="session")
def spoof_data(tmp_path_factory):
    """(folder, manifest, train split, eval split) of ``SpoofDataConfig.quick()`` built once per session
    (memoised here too: each test module that imports the fixture gets its own session instance)."""
    missing = programs_missing()
    if missing:
        pytest.skip(f"speech synthesisers not installed: {missing} (see apt-packages.txt)")
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        out = tmp_path_factory.mktemp("spoof") / "data"
        man = build_dataset(out, SpoofDataConfig.quick(), workers=2, progress=False)
        _BUILT[key] = (out, man, load_split(out, "train"), load_split(out, "eval"))
    return _BUILT[key]
