# fleetwatch — `make run` starts the whole stack with a demo fleet; `make test` runs every test.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint format bench chaos system-deps venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests drive: Chromium (dashboard) and promtool (alert rules).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: venv
	$(VENV)/bin/fleetwatch up

# Test files are spread over this many pytest-xdist workers; a file stays on one worker, so its
# module fixtures (database, services) are made once. Most tests wait on real servers and real
# time, so 3 workers beat 2 on a 2-core machine. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 3

test: venv system-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: venv
	$(VENV)/bin/ruff check services shared tests bench
	$(VENV)/bin/ruff format --check services shared tests bench
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff check --fix services shared tests bench
	$(VENV)/bin/ruff format services shared tests bench

bench: venv
	$(PY) -m bench.run_all

chaos: venv
	$(PY) -m pytest -q tests/chaos --chaos-long

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
