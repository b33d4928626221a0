"""What ComfyUI-Manager installs (requirements.txt) is what pip installs (pyproject.toml), torch is a
floor ComfyUI's own torch meets, and the declared license is the file shipped."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_requirements_txt_and_pyproject_list_the_same_packages_and_torch_is_not_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    manager = requirement_lines((ROOT / "requirements.txt").read_text())
    assert sorted(manager) == sorted(project["dependencies"])
    torch = next(r for r in manager if r.startswith("torch"))
    assert "==" not in torch and "<" not in torch


def test_the_license_file_is_the_declared_apache_license():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"file": "LICENSE"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
