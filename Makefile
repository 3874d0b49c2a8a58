# Two commands on a fresh machine (see README.md):
#   make lab    set everything up, then open the course in JupyterLab
#   make test   set everything up, then run the whole test suite (unit tests + every notebook)
# and, once set up, with the course's environment (no need to activate it):
#   make doctor                      is this machine ready? one OK / WARN / MISSING line per requirement
#   make grade [GRADE=exercises/]    grade your exercise notebooks (a copy is executed; your files are untouched)
#   make site                        render every lesson, executed, into site/
#
# Which torch is installed when the environment has none: TORCH names it (default: the newest), TORCH_INDEX says
# where else pip may look. On a machine without an NVIDIA GPU that is PyTorch's CPU index, so the ~200 MB CPU build
# comes instead of a multi-GB CUDA build; with a GPU, PyPI's default (CUDA) build. Choose yourself with e.g.
#   make lab TORCH="torch==2.13.0"    or    make lab TORCH_INDEX=https://download.pytorch.org/whl/cu126
# An environment that already has torch keeps it.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
HAS_NVIDIA_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(HAS_NVIDIA_GPU),yes)
TORCH_INDEX ?=
else
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
endif
BIN := $(VENV)/bin
JOBS ?= auto
GRADE ?= exercises/
LAB_ARGS ?=
# --dist loadfile: a notebook's cells share one kernel, so all items of a file must run on the same worker.

.PHONY: lab test setup exercises doctor grade site clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# Keep a torch the environment has. Otherwise try TORCH_INDEX if it answers within 10 s (pip would retry it
	@# five times for every package when it is unreachable), else say so and use the default index alone.
	@$(BIN)/python -c "import torch" 2>/dev/null || { \
	  if [ -z "$(TORCH_INDEX)" ]; then set -x; $(BIN)/python -m pip install -q "$(TORCH)"; \
	  elif $(BIN)/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" \
	       "$(TORCH_INDEX)" >/dev/null 2>&1; then \
	    set -x; $(BIN)/python -m pip install -q "$(TORCH)" --extra-index-url "$(TORCH_INDEX)"; \
	  else echo "note: $(TORCH_INDEX) does not answer; installing $(TORCH) from the default index (on Linux" \
	            "that is a CUDA build of several GB; set TORCH or TORCH_INDEX to choose)"; \
	    set -x; $(BIN)/python -m pip install -q "$(TORCH)"; fi; }
	$(BIN)/python -m pip install -q -e ".[lab,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (logattn)" >/dev/null
	touch $@

# JupyterLab rooted at the clone, lesson 0 open, --allow-root only as root, no browser where there is no display.
lab: setup
	$(BIN)/python -m logattn_ref.lab $(LAB_ARGS)

test: setup
	CI=$${CI:-1} $(BIN)/python -m pytest -n $(JOBS) --dist loadfile

doctor: setup
	$(BIN)/python -m logattn_ref.doctor

grade: setup
	$(BIN)/python -m logattn_ref.grade $(GRADE)

site: setup
	$(BIN)/python -m logattn_ref.site --out site/ --execute

exercises: setup
	$(BIN)/python -m logattn_ref.make_exercises

clean:
	rm -rf $(VENV)
