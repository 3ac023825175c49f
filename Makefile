# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
# CI and this Makefile pin the CPU build of torch so that nothing pulls a multi-GB CUDA build;
# GPU users install CUDA torch themselves (README, "GPU machines").

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeseg-installed
DEMO   ?= out/demo

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[cpu,train,openvino,int8,dev,dicom,triton,ray]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/edgeseg info
	$(BIN)/edgeseg demo --out $(DEMO) --force

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
