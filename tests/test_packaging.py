"""Packaging facts that must not drift: environment.yml and pyproject.toml describe the same set."""

import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name -> PyPI's name
NOT_PACKAGES = {"python", "pip"}


def _requirements(strings):
    found = {}
    for text in strings:
        req = Requirement(text)
        found[req.name.lower().replace("_", "-")] = str(req.specifier)
    return found


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    strings = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        strings += extra
    return _requirements(strings)


def environment_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = [], []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip += [p for p in entry["pip"] if not p.startswith("-e")]
        else:
            name = Requirement(entry).name
            if name not in NOT_PACKAGES:
                conda.append(entry.replace(name, CONDA_NAMES.get(name, name), 1))
    return _requirements(conda + pip)


def test_environment_yml_and_pyproject_agree():
    assert environment_requirements() == pyproject_requirements()


def test_no_upper_bounds_or_pins():
    """Lower bounds only: pins are the most common reason course notebooks break on Colab."""
    for name, spec in pyproject_requirements().items():
        assert all(op.operator == ">=" for op in Requirement(f"{name}{spec}").specifier), (name, spec)


def test_layout_exists():
    for path in ["notebooks", "logattn_ref", "exercises", "solutions", "tests", "environment.yml", "README.md",
                 "LICENSE", "CITATION.cff", ".ci/run"]:
        assert (ROOT / path).exists(), path
