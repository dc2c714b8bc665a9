# Quick start: `make demo` runs the main job, `make test` runs every check CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The SR's request path compiled with mypyc (tools/compile_router.py) and the PCE's
# shortest-path kernel with Cython (tools/compile_pce.py), rebuilt when they change.
NATIVE := $(VENV)/.router-native
ROUTER_SOURCES := $(wildcard src/flame/sfr/router/*.py)
PCE_KERNEL := src/flame/sfr/_sssp.pyx

.PHONY: demo validate test lint typecheck unit bench build clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=77"
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

$(NATIVE): $(STAMP) $(ROUTER_SOURCES) $(PCE_KERNEL) tools/compile_router.py tools/compile_pce.py tools/native_cli.py
	$(BIN)/python tools/compile_router.py --optional
	$(BIN)/python tools/compile_pce.py --optional
	touch $(NATIVE)

# Recompile the SR's data plane and the PCE's kernel now (`tools/compile_router.py --clean`
# goes back to interpreted, `tools/compile_pce.py --clean` to scipy's Dijkstra).
build:
	$(BIN)/python tools/compile_router.py
	$(BIN)/python tools/compile_pce.py
	touch $(NATIVE)

# The main job: FLAME-in-a-box. Every component as a real process on this machine, the demo
# VoD service deployed; Ctrl-C stops everything. `make validate` checks the example templates.
demo: $(NATIVE)
	$(BIN)/flame up

validate: $(STAMP)
	$(BIN)/flame topology check examples/topology/sandpit.yaml
	@for svc in examples/*/; do \
	  case $$svc in examples/topology/|examples/sf/) continue;; esac; \
	  echo "== $$svc"; \
	  $(BIN)/flame validate --topology examples/topology/sandpit.yaml $$svc*.yaml || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --config-file tests/mypy.ini

# pytest on TEST_JOBS xdist workers (most tests wait on real servers, so 3 overlap on 2 cores);
# `make test TEST_JOBS=0` runs serially, to debug (docs/testing.md).
TEST_JOBS ?= 3
unit: $(NATIVE)
	FLAME_REQUIRE_COMPILED=1 $(BIN)/pytest -q -n $(TEST_JOBS) --dist worksteal

test: lint typecheck unit

bench: $(NATIVE)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/tosca_validate.py $(BENCH_ARGS)
	$(BIN)/python bench/pce.py $(BENCH_ARGS)
	$(BIN)/python bench/sr_vs_nginx.py $(BENCH_ARGS)
	$(BIN)/python bench/startup.py $(BENCH_ARGS)
	$(BIN)/python bench/lifecycle.py $(BENCH_ARGS)
	$(BIN)/python bench/closed_loop.py $(BENCH_ARGS)
	$(BIN)/python bench/clmc_vs_influxdb.py $(BENCH_ARGS)
	$(BIN)/python bench/media_ingest.py $(BENCH_ARGS)
	$(BIN)/python bench/sr_failover.py $(BENCH_ARGS)
	$(BIN)/python bench/pce_restart.py $(BENCH_ARGS)
	$(BIN)/python bench/sr_tls_vs_nginx.py $(BENCH_ARGS)
	$(BIN)/python bench/sr_tls_hop_vs_nginx.py $(BENCH_ARGS)
	$(BIN)/python bench/cache_vs_nginx.py $(BENCH_ARGS)
	$(BIN)/python bench/sr_websocket_vs_nginx.py $(BENCH_ARGS)
	$(BIN)/python bench/transcode_ladder.py $(BENCH_ARGS)
	$(BIN)/python bench/packaging.py $(BENCH_ARGS)
	$(BIN)/python bench/live_latency.py $(BENCH_ARGS)
	$(BIN)/python bench/lod.py $(BENCH_ARGS)
	$(BIN)/python bench/netns_link_failure.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build
	find src -name '*.so' -delete
	rm -f src/flame/sfr/_sssp.c
