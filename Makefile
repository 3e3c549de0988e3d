# The few targets a newcomer needs. Each one sets up .venv first with what it needs (once, and
# again when pyproject.toml changes), so `make train` and `make test` work on a fresh machine:
# train and ui install the runtime dependencies only; lint and test add the dev extra and the
# bench extra (tests/test_bench.py runs SB3); bench adds the bench extra.
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
BENCH := $(VENV)/.installed-bench
CLUSTER := $(VENV)/.installed-cluster

.PHONY: install train test lint bench results ui postgres-server cluster-up cluster-down

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# pip install -e '.$(EXTRAS)', then the stamp; any extras install the runtime dependencies too.
$(RUNTIME): EXTRAS :=
$(DEV): EXTRAS := [dev,bench,cluster,dashboard]
$(BENCH): EXTRAS := [bench]
$(CLUSTER): EXTRAS := [cluster]
$(RUNTIME) $(DEV) $(BENCH) $(CLUSTER): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.$(EXTRAS)'
	touch $(sort $@ $(RUNTIME))

# Everything: the dev, bench, cluster and dashboard extras.
install: $(DEV)

# make train ARGS="algo.clip=0.1 env=acrobot"
train: $(RUNTIME)
	$(PY) -m ppo1.train $(ARGS)

lint: $(DEV)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The browser tests drive Debian's Chromium (never a browser download of Playwright's own).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

# The cluster tests and `make cluster-up` start Debian's PostgreSQL server (not on PATH there).
postgres-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# The tests marked slow (learning runs, sweeps, browsers, the cluster: two thirds of the suite's
# time) run with SLOW=1, as .ci/run does; a plain `make test` leaves them out. Both install
# what the slow tests need, so that one command sets a machine up.
test: lint $(CHROMIUM) postgres-server
	$(PY) -m pytest $(if $(SLOW),,-m "not slow") $(PYTEST_ARGS)

# make bench ARGS="env=pendulum --repeats 2"
bench: $(BENCH)
	$(PY) -m benchmarks.bench $(ARGS)

# A local PostgreSQL + MLflow server on 127.0.0.1 under .cluster/ for multi-worker sweeps
# (docs/cluster.md); cluster-down stops both by pid.
cluster-up: $(CLUSTER) postgres-server
	$(PY) -m ppo1.sweep.cluster up .cluster

cluster-down:
	$(PY) -m ppo1.sweep.cluster down .cluster

# make results ARGS="--rows pendulum,acrobot --seeds 3"; --quick for the cheap rows (docs/results.md)
results: $(RUNTIME)
	$(PY) -m benchmarks.results $(ARGS)

ui: $(RUNTIME)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000 --workers 1
