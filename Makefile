# pathor1 -- every target installs what it needs into .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.pathor1-installed
export PATHOR1_HOME ?= $(CURDIR)/runs
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
ARGS ?=
# The tiny CPU models are too small for intra-op threads to pay: one thread per process was 3x faster than two
# for the pretrain/SFT tests on a loaded 2-core machine (16 s vs 46 s). Used by the CPU targets below.
CPU_THREADS ?= 1
# `make pretrain sft rl` runs the stages one by one on the demo corpus, each starting from the previous
# stage's newest registry entry; point these at your own YAML (or add ARGS="key=value ...") for real runs.
# LAUNCH runs each stage target as its own job, e.g.
#   make pretrain sft rl LAUNCH="$(BIN)/accelerate launch --config_file recipes/configs/accelerate/zero2.yaml"
#   make pretrain sft rl LAUNCH="$(BIN)/torchrun --nproc_per_node 8"
LAUNCH ?= $(PY)
PRETRAIN_CONFIG ?= stages/configs/pretrain_demo.yaml
SFT_CONFIG      ?= stages/configs/sft_demo.yaml
RL_CONFIG       ?= stages/configs/rl_dapo.yaml
OPD_CONFIG      ?= stages/configs/opd_demo.yaml

.PHONY: install install-gpu install-flash-attn cuda-unknown gpu-lock test test-slow test-all demo pretrain sft opd rl clip eval report bench lint clean gpu-wheels gpu-check

install: $(STAMP)

# requirements.lock pins every package; torch==2.13.0 resolves to the CPU wheel on CPU machines
# (pip's find-links) and to the CUDA wheel on GPU machines. The .pth line installs the torchvision fix
# (stages/compat.py) for every interpreter in the venv, so CLIs like `accelerate` and `torchrun` get it.
# DS_BUILD_OPS=0: DeepSpeed installs in seconds without compiling; the one op its CPU runs need
# (deepspeed_shm_comm) JIT-compiles on first use (~2 min, g++ + ninja, cached in ~/.cache/torch_extensions).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c requirements.lock -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	echo "import stages.compat as _c; _c.install()" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-pathor1-torchvision-fix.pth
	touch $(STAMP)

# GPU machines: everything of requirements.lock plus vLLM (within TRL's range), DeepSpeed and their dependencies,
# all pinned in requirements-gpu.lock (`make gpu-lock`). CUDA picks the torch build: cu130 = PyPI's torch 2.13 and
# vllm (NVIDIA driver >= 580), cu128 / cu126 = torch's own index and vLLM's per-CUDA wheel (scripts/install_gpu.py).
# Default: the newest build this machine's driver runs (nvidia-smi). One stamp per build and one for flash-attn,
# so `make install-gpu FLASH_ATTN=1` after a plain `make install-gpu` builds flash-attn, and CUDA=... reinstalls.
# The driver is asked once, and only by the targets that install (detect prints why it cannot choose).
CUDA := $(or $(CUDA),$(if $(filter install-gpu install-flash-attn,$(MAKECMDGOALS)),$(shell $(PYTHON) scripts/install_gpu.py detect)))
FLASH_ATTN ?=
GPU_STAMP := $(VENV)/.pathor1-gpu-$(CUDA)
GPU_STAMPS := $(foreach c,cu126 cu128 cu130,$(VENV)/.pathor1-gpu-$(c))
FLASH_STAMP := $(VENV)/.pathor1-flash-attn
install-gpu: $(if $(filter $(GPU_STAMP),$(GPU_STAMPS)),$(GPU_STAMP) $(if $(FLASH_ATTN),$(FLASH_STAMP)),cuda-unknown)
cuda-unknown:
	@echo "install-gpu: CUDA='$(CUDA)': choose CUDA=cu126|cu128|cu130 (driver >= 525.60.13 | 570.26 | 580.65.06)" >&2; exit 2

$(GPU_STAMPS): $(VENV)/.pathor1-gpu-%: $(STAMP) requirements-gpu.lock
	$(PY) scripts/install_gpu.py install --cuda $* --python $(PY)
	rm -f $(VENV)/.pathor1-gpu-* $(FLASH_STAMP)  # flash-attn was built against the torch just replaced
	touch $@

# flash-attn publishes no wheel for torch 2.13: pip compiles it against the installed torch, which needs nvcc of
# torch's CUDA major; install_gpu.py checks that first and says what to do otherwise (sdpa is the default).
install-flash-attn: $(if $(filter $(GPU_STAMP),$(GPU_STAMPS)),$(FLASH_STAMP),cuda-unknown)
$(FLASH_STAMP): $(GPU_STAMP)
	MAX_JOBS=$${MAX_JOBS:-4} $(PY) scripts/install_gpu.py flash-attn --python $(PY)
	touch $@

# Re-resolve requirements-gpu.in against requirements.lock under GPU_LOCK_PYTHON and rewrite the GPU lock (~10 min,
# metadata and wheels from PyPI). CHECK=1: resolve both locks, as pinned, under every Python pyproject.toml claims
# (LOCK_PYTHONS, default the pyenv interpreters of those versions); logs and their last lines in lock-check/.
PYENV_ROOT ?= $(HOME)/.pyenv
GPU_LOCK_PYTHON ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python) python3.12)
LOCK_PYTHONS ?= $(foreach v,$(shell $(PYTHON) -c 'import sys; sys.path.insert(0, "scripts"); import locks; print(*locks.claimed_minors())'),$(firstword $(wildcard $(PYENV_ROOT)/versions/$(v).*/bin/python) python$(v)))
gpu-lock:
	$(if $(CHECK),$(PYTHON) scripts/locks.py check $(LOCK_PYTHONS),$(GPU_LOCK_PYTHON) scripts/locks.py write-gpu)

test: $(STAMP)
	OMP_NUM_THREADS=$(CPU_THREADS) $(PY) -m pytest -q

# ruff: pyflakes errors (unused / undefined names); vulture: dead code (scripts/vulture_whitelist.py lists what is
# unused by design). Both pinned in requirements.lock.
LINT_PATHS := corpora stages pathoclip evaluation recipes benchmarks scripts tests
lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m vulture $(LINT_PATHS) --min-confidence 80

test-slow: $(STAMP)
	OMP_NUM_THREADS=$(CPU_THREADS) $(PY) -m pytest -q -m slow

test-all: $(STAMP)
	OMP_NUM_THREADS=$(CPU_THREADS) $(PY) -m pytest -q -m "not gpu"

demo: $(STAMP)
	OMP_NUM_THREADS=$(CPU_THREADS) $(PY) -m recipes.patho_r1 $(ARGS)

pretrain: $(STAMP)
	$(LAUNCH) -m recipes.pretrain --config $(PRETRAIN_CONFIG) $(ARGS)

sft: $(STAMP)
	$(LAUNCH) -m recipes.sft --config $(SFT_CONFIG) $(ARGS)

opd: $(STAMP)
	$(LAUNCH) -m recipes.opd --config $(OPD_CONFIG) $(ARGS)

rl: $(STAMP)
	$(LAUNCH) -m recipes.rl --config $(RL_CONFIG) $(ARGS)

clip: $(STAMP)
	$(PY) -m pathoclip.train $(ARGS)

eval: $(STAMP)
	$(PY) -m evaluation.run $(or $(ARGS),--model rl:latest --suite demo-mcq)

report: $(STAMP)
	$(PY) -m evaluation.report $(or $(ARGS),rl:latest)
	$(PY) -m evaluation.browse $(or $(ARGS),rl:latest)

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

# On a machine with a package registry: the wheels `make gpu-check` needs on a GPU machine without internet
# (Python 3.12, linux x86_64) into .gpu-wheels/ (ignored by git, <= 64 MiB). Copy the repository with it.
gpu-wheels: $(STAMP)
	PIP="$(PY) -m pip" scripts/gpu_wheels.sh

# On the GPU machine (no .venv, no internet): its own python3 with torch/transformers/accelerate/peft installed.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
