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

.PHONY: install test test-slow test-all demo pretrain sft rl clip eval report bench lint clean

install: $(STAMP)

# requirements.lock pins every package; torch==2.13.0 resolves to the CPU wheel on CPU machines
# (pip's find-links) and to the CUDA wheel on GPU machines. The .pth line installs the torchvision fix
# (stages/compat.py) for every interpreter in the venv, so CLIs like `accelerate` and `torchrun` get it.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	echo "import stages.compat as _c; _c.install()" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-pathor1-torchvision-fix.pth
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not gpu"

demo: $(STAMP)
	$(PY) -m recipes.patho_r1 $(ARGS)

pretrain: $(STAMP)
	$(PY) -m recipes.pretrain $(ARGS)

sft: $(STAMP)
	$(PY) -m recipes.sft $(ARGS)

rl: $(STAMP)
	$(PY) -m recipes.rl $(ARGS)

clip: $(STAMP)
	$(PY) -m pathoclip.train $(ARGS)

eval: $(STAMP)
	$(PY) -m evaluation.run $(ARGS)

report: $(STAMP)
	$(PY) -m evaluation.report $(ARGS)

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
