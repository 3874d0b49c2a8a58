"""Committed notebooks follow one policy (logattn_ref.notebooks): outputs stripped, counts cleared, python3."""

import copy

import nbformat
import pytest

from logattn_ref import notebooks

PATHS = notebooks.notebook_paths()


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_is_clean(path):
    assert notebooks.problems(path) == [], f"run: python -m logattn_ref.notebooks --fix {path}"


def test_there_are_notebooks_in_every_course_folder():
    assert {p.parent.name for p in PATHS} == set(notebooks.NOTEBOOK_DIRS)


def test_policy_detects_outputs_and_foreign_kernels(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("1 + 1", execution_count=3))
    nb.cells[0].outputs.append(nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=3))
    nb.metadata["kernelspec"] = {"name": "julia", "display_name": "Julia"}
    dirty_path = tmp_path / "dirty.ipynb"
    nbformat.write(copy.deepcopy(nb), dirty_path)
    found = notebooks.problems(dirty_path)
    assert any("stored outputs" in p for p in found) and any("not python3" in p for p in found)

    nbformat.write(notebooks.clean(nb), dirty_path)
    assert notebooks.problems(dirty_path) == []
