"""The repository's set-up files agree with each other."""
from __future__ import annotations

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    env_lines = [l.strip().lstrip("- ").strip() for l in (REPO / "environment.yml").read_text().splitlines()]
    have = _pins(env_lines)
    assert wanted == have, {"missing_in_environment_yml": sorted(set(wanted) - set(have)),
                            "extra_in_environment_yml": sorted(set(have) - set(wanted)),
                            "different": {k: (wanted[k], have[k]) for k in set(wanted) & set(have) if wanted[k] != have[k]}}
    assert len(wanted) >= 15


def test_torch_is_pinned_to_the_cpu_build_on_disk():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]


def test_console_script_and_layout():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["kdkit"] == "kdkit.cli:main"
    for path in ("kdkit", "notebooks", "tests", "slurm_templates", "environment.yml", "README.md", ".ci/run", ".gitignore"):
        assert (REPO / path).exists(), path
    ignored = (REPO / ".gitignore").read_text().split()
    assert "runs/" in ignored and ".venv/" in ignored
