# Two commands: `make demo` and `make test`. Both create ./.venv on first use.
# `make wheel`: the deployment wheel in dist/ (pip install dist/qfsdk-*.whl: torch-free, no venv needed here).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; override (e.g. TORCH=torch) to let pip choose.
TORCH ?= torch==2.13.0
EXTRAS ?= quantize,dev,dlib,openvino,ray
BIN := $(VENV)/bin
STAMP := $(VENV)/.qfsdk-installed

.PHONY: demo test install clean native wheel

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qfsdk demo

test: $(STAMP)
	$(BIN)/python -m pytest

DIST ?= dist
wheel:
	$(PYTHON) -m pip wheel --quiet --no-deps --wheel-dir $(DIST) .
	@ls $(DIST)/qfsdk-*.whl

# libqfsdk.so (C ABI) and examples/embed in build/native, with OpenVINO from the venv's wheel
# (creates the venv if missing, never reinstalls it).
native: | $(STAMP)
	cmake -S runtime/native -B build/native $(if $(shell command -v ninja),-G Ninja) -DCMAKE_BUILD_TYPE=Release \
		-DOpenVINO_DIR="$$($(BIN)/python -c 'import openvino, os; print(os.path.dirname(openvino.__file__))')/cmake"
	cmake --build build/native -j 2

clean:
	rm -rf $(VENV) .cache qfsdk-demo build dist *.egg-info
