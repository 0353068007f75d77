# Every target does its own set-up: a virtualenv in .venv, pinned dependencies.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck layers redis unit lock clean docs

$(STAMP): requirements/dev.txt pyproject.toml
	@./scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

docs: $(STAMP)
	$(BIN)/python -c "from conveyor.config import render_markdown; print(render_markdown(), end='')" > docs/settings.md
	$(BIN)/python -c "from conveyor.brokers.redis.docs import render_markdown; print(render_markdown(), end='')" > docs/redis.md

# The tests start their own redis-server processes; this installs the binary if missing.
redis:
	@./scripts/ensure-redis.sh

test: redis lint typecheck layers
	$(BIN)/python -m pytest -q

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | sort > requirements/dev.txt.new
	@{ echo "# Pinned set for development, tests and the demo (make test / make demo)."; echo "# Regenerate: make lock"; cat requirements/dev.txt.new; } > requirements/dev.txt; rm requirements/dev.txt.new

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
