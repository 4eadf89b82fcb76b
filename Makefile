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
PRETRAIN_CONFIG ?= stages/configs/pretrain_demo.yaml
SFT_CONFIG      ?= stages/configs/sft_demo.yaml
RL_CONFIG       ?= stages/configs/rl_dapo.yaml

.PHONY: install test test-slow test-all demo pretrain sft rl clip eval report bench lint clean

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

test: $(STAMP)
	OMP_NUM_THREADS=$(CPU_THREADS) $(PY) -m pytest -q

test-slow: $(STAMP)
	OMP_NUM_THREADS=$(CPU_THREADS) $(PY) -m pytest -q -m slow

test-all: $(STAMP)
	OMP_NUM_THREADS=$(CPU_THREADS) $(PY) -m pytest -q -m "not gpu"

demo: $(STAMP)
	OMP_NUM_THREADS=$(CPU_THREADS) $(PY) -m recipes.patho_r1 $(ARGS)

pretrain: $(STAMP)
	$(PY) -m recipes.pretrain --config $(PRETRAIN_CONFIG) $(ARGS)

sft: $(STAMP)
	$(PY) -m recipes.sft --config $(SFT_CONFIG) $(ARGS)

rl: $(STAMP)
	$(PY) -m recipes.rl --config $(RL_CONFIG) $(ARGS)

clip: $(STAMP)
	$(PY) -m pathoclip.train $(ARGS)

eval: $(STAMP)
	$(PY) -m evaluation.run $(or $(ARGS),--model rl:latest --suite demo-mcq)

report: $(STAMP)
	$(PY) -m evaluation.report $(or $(ARGS),rl:latest)

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
