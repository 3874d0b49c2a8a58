# Two commands on a fresh machine (see README.md):
#   make lab    set everything up, then open the course in JupyterLab
#   make test   set everything up, then run the whole test suite (unit tests + every notebook)
# TORCH picks the torch to install when the environment has none (e.g. TORCH="torch==2.13.0").

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
BIN := $(VENV)/bin
JOBS ?= auto
# --dist loadfile: a notebook's cells share one kernel, so all items of a file must run on the same worker.

.PHONY: lab test setup exercises clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[lab,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (logattn)" >/dev/null
	touch $@

lab: setup
	$(BIN)/jupyter lab notebooks/00_start_here.ipynb

test: setup
	CI=$${CI:-1} $(BIN)/python -m pytest -n $(JOBS) --dist loadfile

exercises: setup
	$(BIN)/python -m logattn_ref.make_exercises

clean:
	rm -rf $(VENV)
