# The README's two commands: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint clean-demo

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned here (not in setup.cfg) so other platforms can pick their own build.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Rules and tests call `healnet`: the venv's bin goes first on PATH, activated or not.
demo: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) results/demo/cindex.tsv

test: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -q tests

bench: install
	for f in bench/bench_*.py; do PATH=$(abspath $(BIN)):$$PATH $(BIN)/python $$f || exit 1; done

lint: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow

clean-demo:
	rm -rf data/demo results/demo
