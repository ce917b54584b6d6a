# The two commands of the README:
#   make demo   creates .venv if missing, then runs the whole story on built-in synthetic CAN traffic
#   make test   creates .venv if missing, then runs the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# pytest-xdist workers for make test: one per core (TEST_WORKERS=0 runs the suite in one process)
TEST_WORKERS ?= auto

.PHONY: demo test venv clean

$(BIN)/kdkit: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name kdkit --display-name "kdkit (.venv)" >/dev/null
	@touch $@

venv: $(BIN)/kdkit

demo: venv
	$(BIN)/kdkit demo

test: venv
	$(BIN)/python -m pytest -ra --durations=15 -n $(TEST_WORKERS) --dist loadgroup

clean:
	rm -rf runs/demo
