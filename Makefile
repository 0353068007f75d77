# Every target does its own set-up: a virtualenv in .venv, pinned dependencies.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck layers redis browser unit lock clean docs dashboard-screenshots bench bench-quick bench-lock bench-memory chaos failover

$(STAMP): requirements/dev.txt pyproject.toml
	@./scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

# The package, then the typed API as users see it (tests/typing: assert_type, expected errors).
typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy tests/typing

layers: $(STAMP)
	$(BIN)/lint-imports

docs: $(STAMP)
	$(BIN)/python -c "from conveyor.config import render_markdown; print(render_markdown(), end='')" > docs/settings.md
	$(BIN)/python -c "from conveyor.brokers.redis.docs import render_markdown; print(render_markdown(), end='')" > docs/redis.md

# docs/images/dashboard-*.png: every page of the dashboard with real workers and data.
dashboard-screenshots: $(STAMP) redis browser
	$(BIN)/python tests/browser/screenshots.py

# The tests start their own redis-server processes; this installs the binary if missing.
redis:
	@./scripts/ensure-redis.sh

# The dashboard's tests drive a headless Chromium; this installs it (and its driver) if missing.
browser:
	@./scripts/ensure-chromium.sh

# Two pytest workers: most tests wait on worker processes, not on the CPU. Work stealing:
# a worker that runs out of tests takes some queued for the other, so neither idles at the end.
test: redis browser lint typecheck layers
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# The chaos suite's long run (docs/reliability.md): 100,000 tasks on Redis, 20,000 on SQLite,
# through killed workers and a restarted, killed and stalled Redis; about 7 minutes.
# `make test` runs a short version. CHAOS_ARGS: more options (python -m chaos --help, in tests/).
chaos: $(STAMP) redis
	cd tests && $(abspath $(BIN))/python -m chaos --json ../docs/chaos-results.json $(CHAOS_ARGS)

# Failovers under load behind Sentinel (docs/scaling.md) with a longer load than `make test`'s:
# CONVEYOR_FAILOVER_TASKS tasks per run [20000].
failover: $(STAMP) redis
	CONVEYOR_FAILOVER_TASKS=$${CONVEYOR_FAILOVER_TASKS:-20000} $(BIN)/python -m pytest -q \
		tests/integration/test_sentinel_failover.py

# Side by side with Celery, Dramatiq, RQ, arq and SAQ on one redis-server (docs/benchmarks.md).
# Each peer gets its own virtualenv under .bench/venvs from bench/requirements/*.txt.
bench: $(STAMP) redis
	@./bench/setup.sh "$(PYTHON)"
	$(BIN)/python -m bench.run

bench-quick: $(STAMP) redis
	@./bench/setup.sh "$(PYTHON)"
	$(BIN)/python -m bench.run --quick

# One worker's memory over 1,000,000 no-op tasks: exit 1 if its main process grows by 5 MiB
# or more after warm-up. Options: python -m bench.worker_memory --help.
bench-memory: $(STAMP) redis
	$(BIN)/python -m bench.worker_memory

bench-lock:
	./bench/setup.sh "$(PYTHON)" --lock

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | sort > requirements/dev.txt.new
	@{ echo "# Pinned set for development, tests and the demo (make test / make demo)."; echo "# Regenerate: make lock"; cat requirements/dev.txt.new; } > requirements/dev.txt; rm requirements/dev.txt.new

clean:
	rm -rf $(VENV) .bench .mypy_cache .ruff_cache .pytest_cache
