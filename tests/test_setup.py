"""The README's two set-up commands and CI stay one path: CI runs install.sh and exactly the README's test command."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up \(two commands\)\n+```bash\n(.*?)```", text, re.S)
    assert block, "README has no '## Set-up (two commands)' bash block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_has_two_commands_and_the_first_runs_install_sh():
    install, test = _readme_commands()
    assert install.startswith("bash install.sh")
    assert "pytest" in test


def test_ci_runs_install_sh_then_exactly_the_readme_test_command():
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert "bash install.sh" in ci
    assert ci[-1] == _readme_commands()[1]
    assert ci.index("bash install.sh") < len(ci) - 1


def test_install_sh_installs_every_listed_system_package_and_the_dev_extras():
    script = (ROOT / "install.sh").read_text()
    assert "apt-packages.txt" in script and "apt-unpack.txt" in script
    assert 'pip install --quiet -e ".[dev]"' in script and "torch==" in script
    assert "set -euo pipefail" in script
