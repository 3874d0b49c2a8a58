"""The static site: a small notebook executed (fast mode) and rendered, an index that links it, failures named."""

import re

import nbformat
import pytest

from logattn_ref import site


def write_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = cells
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_site_executes_renders_and_indexes(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)  # --fast must set it for the kernel by itself
    lessons = tmp_path / "notebooks"
    lessons.mkdir()
    badge = nbformat.v4.new_markdown_cell("[![Open In Colab](badge.svg)](https://colab.example/x)",
                                          metadata={"tags": ["logattn-colab-badge"]})
    good = write_notebook(lessons / "01_small.ipynb", [
        badge,
        nbformat.v4.new_markdown_cell("# Lesson 1: a <small> lesson\n\nSome prose."),
        # course.fast_mode() is what FAST is made of (calling setup() would import torch: seconds).
        nbformat.v4.new_code_cell("import os\nfrom logattn_ref.course import fast_mode\n"
                                  "print('fast mode:', fast_mode(), 'cwd:', os.path.basename(os.getcwd()))"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]);"),
    ])
    bad = write_notebook(lessons / "02_broken.ipynb", [
        nbformat.v4.new_markdown_cell("# Lesson 2: broken"),
        nbformat.v4.new_code_cell("raise ValueError('lesson two is broken')"),
    ])
    out = tmp_path / "site"
    assert site.main(["--out", str(out), "--execute", "--fast", str(good), str(bad)]) == 1
    page = (out / "01_small.html").read_text()
    assert "fast mode: True cwd: notebooks" in page  # executed, in fast mode, in the notebook's folder
    assert re.search(r'<img[^>]+src="data:image/png;base64,', page)  # the plot is embedded
    assert "colab.example" not in page  # no Colab badge on the static site
    assert "<title>Lesson 1: a &lt;small&gt; lesson</title>" in page  # the lesson's title, not "Notebook"
    index = (out / "index.html").read_text()
    assert '<a href="01_small.html">Lesson 1: a &lt;small&gt; lesson</a>' in index
    assert "Failed to build" in index and "Lesson 2: broken" in index and "lesson two is broken" in index
    assert not (out / "02_broken.html").exists() and (out / ".nojekyll").exists()
    assert "executed in fast mode" in index


def test_site_without_execution_and_argument_errors(tmp_path, capsys):
    path = write_notebook(tmp_path / "03_x.ipynb", [nbformat.v4.new_code_cell("1 + 1")])
    assert site.main(["--out", str(tmp_path / "out"), str(path)]) == 0
    assert "03_x" in (tmp_path / "out" / "index.html").read_text()  # no heading: the file name is the title
    assert "<title>03_x</title>" in (tmp_path / "out" / "03_x.html").read_text()
    assert "not executed" in (tmp_path / "out" / "index.html").read_text()
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        site.build(tmp_path / "out", [tmp_path / "missing.ipynb"])
    with pytest.raises(SystemExit):
        site.main(["--out", str(tmp_path / "out"), "--fast", str(path)])
    assert "--fast only applies with --execute" in capsys.readouterr().err


def test_default_lessons_are_the_course_notebooks_in_order():
    paths = site.lesson_paths()
    assert paths == sorted(paths) and all(p.parent.name == "notebooks" for p in paths)
    assert any(p.name.startswith("01_") for p in paths)
    names = [p.name for p in paths]
    # Lesson 4b sits between lessons 4 and 5 ("_" sorts before "b").
    assert names.index("04_gpu_scan.ipynb") < names.index("04b_kernels.ipynb") < names.index("05_train_small_model.ipynb")
