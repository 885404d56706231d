# Set-up, main job and tests. `make demo` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-matrix bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.13.0 (CPU) only when the venv has no torch yet; the package itself asks for torch>=2.1,<3
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/dcgmm train --arch 2L-c64 --dataset mnist --classes 0-4 --epochs 25 --out runs/demo --overwrite
	$(BIN)/dcgmm occlude --dataset mnist --classes 0-4 --n 100 --seed 1 --out runs/demo/damaged
	$(BIN)/dcgmm inpaint --model runs/demo --npy runs/demo/damaged/damaged.npy --clean runs/demo/damaged/clean.npy --out runs/demo/inpainting --true-mask runs/demo/damaged/mask.npy --baseline-dataset mnist --baseline-classes 0-4
	# the sampling model: 2L-b's windows tile the image, so its samples vary where 2L-c64's average into templates
	$(BIN)/dcgmm train --arch 2L-b --dataset mnist --classes 0-4 --epochs 25 --out runs/demo-sampling --overwrite

test: setup
	$(BIN)/python -m pytest -q

# The suite under other thread counts, Python's development mode and other CPU kernels (MKL's AVX2 and
# SSE4.2 paths, as AMD and older Intel CPUs run them; PyTorch's baseline kernels): results must not depend on them
test-matrix: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q
	$(BIN)/python -X dev -m pytest -q
	MKL_ENABLE_INSTRUCTIONS=AVX2 $(BIN)/python -m pytest -q
	MKL_ENABLE_INSTRUCTIONS=SSE4_2 ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/sgd_vs_em.py
	$(BIN)/python benchmarks/speed.py
