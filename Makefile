# The README's two commands: `make demo` and `make test`. `make lock` re-resolves requirements.lock
# (docs/environment.md).
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# torch is pinned here (not in setup.cfg) so other platforms can pick their own build; `make lock`
# puts these pins into the lock, which is what `make install` installs.
TORCH := torch==2.14.1 torchvision==0.29.1
# pip-compile: exact pins with hashes of the whole stack, pip and setuptools included; no index URLs
# in the lock (pip's own config says where packages come from, on this machine and elsewhere).
LOCK_FLAGS := --extra dev --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
# the lock's versions, hash-checked, nothing resolved (--no-deps): the lock is the whole stack
PIP_LOCKED = $(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)

.PHONY: install lock lock-upgrade demo test bench lint clean-demo

install: $(STAMP)

$(STAMP): $(LOCK) setup.cfg pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	# a current pip to install with (PEP 517 builds of the few sdists); the lock then pins pip itself
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_LOCKED)
	# remove what the lock lacks (installed by hand or by an older lock); pip-sync comes with the lock
	$(BIN)/pip-sync --quiet $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	# the lock covers setup.cfg (else: `make lock`) and is exactly what is installed
	$(BIN)/healnet versions --check
	$(BIN)/python -m pip check
	touch $@

# Re-resolve setup.cfg's ranges (+ TORCH) into the lock, keeping current pins where they still fit;
# lock-upgrade takes the newest versions the ranges allow. Both regenerate envs/healnet.yaml.
lock:
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(PIP_LOCKED)
	printf '%s\n' $(TORCH) | $(BIN)/pip-compile --quiet $(LOCK_FLAGS) $(UPGRADE) --output-file $(LOCK) setup.cfg -
	PYTHONPATH=$(CURDIR) $(BIN)/python -m healnet.cli env-yaml --lock $(LOCK) --out envs/healnet.yaml

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

# Rules and tests call `healnet`: the venv's bin goes first on PATH, activated or not.
demo: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) results/demo/cindex.tsv

test: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -q -n auto --dist loadfile --durations=30 tests

bench: install
	for f in bench/bench_*.py; do PATH=$(abspath $(BIN)):$$PATH $(BIN)/python $$f || exit 1; done

lint: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-demo:
	rm -rf data/demo results/demo
