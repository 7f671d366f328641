# Single entry point for humans, README and CI (.ci/run calls `make test`).
#
#   make bootstrap   install services, `pip install -e .[dev]`, build Go interop programs
#   make test        bootstrap + lint + typecheck + full pytest (tests/ and interop/tests/; the
#                    extra backend combinations run a representative subset of echo types)
#   make unit        pytest tests/unit only (no bootstrap)
#   make lint        ruff check on the source/test dirs that exist
#   make typecheck   mypy --strict machinery_compat
#   make interop     bootstrap + pytest interop/tests -m interop
#   make interop-full  bootstrap + pytest interop/tests --interop-full (every echo type on the extra
#                    backend combinations amqp+redis, sqs+redis too; `make test` runs a subset there)
#   make bench       bootstrap + python -m bench.redis_bench, then bench.amqp_bench (RabbitMQ broker, Redis results), then bench.sqs_bench (SQS on moto, Redis results), then bench.latency_bench (enqueue -> start/result, Python vs Go)
#   make bench-full  bootstrap + python -m bench.depth_bench (#13's long rows: drain rate with 1M tasks queued vs 10k,
#                    worker RSS over a 1M-task drain; ~3.5 min, ~0.85 GB in Redis)
#   make soak        bootstrap + python -m bench.soak (kill -9 loops on Redis and AMQP, Redis restarts, ~4 min)
#   make demo        bootstrap + python examples/demo.py
#   make golden      interop/golden.sh (regenerate golden wire fixtures)
#   make readme-table  README's broker x backend table from interop/RESULTS.md (the last interop run)
#   make conformance-versions  `machinery-compat conformance` for each MACHINERY_VERSIONS (probes built
#                    per version, cached in ~/.cache/machinery_compat) on CONFORMANCE_BROKER (a Redis
#                    you started); reports in build/conformance.md and build/conformance.xml

PYTHON ?= python3
PYTEST ?= $(PYTHON) -m pytest -q
PYTEST_ARGS ?=

# Directories that may not exist yet are dropped rather than failing.
LINT_DIRS := $(wildcard machinery_compat tests interop/tests bench examples scripts)
TEST_DIRS := $(wildcard tests interop/tests)

export PYTHON

.DEFAULT_GOAL := help
.NOTPARALLEL:
.PHONY: help bootstrap test pytest unit lint typecheck interop interop-full bench bench-full soak demo golden readme-table clean conformance-versions

help:
	@sed -n 's/^#   /  /p' $(firstword $(MAKEFILE_LIST))

bootstrap:
	@bash scripts/bootstrap.sh

# Runs every check even when an earlier one fails, then summarises; fails
# if any failed. (bootstrap must succeed first.)
test: bootstrap
	@failed=""; \
	for step in lint typecheck pytest; do \
	  echo "== make $$step"; \
	  $(MAKE) --no-print-directory $$step || failed="$$failed $$step"; \
	done; \
	echo; \
	if [ -n "$$failed" ]; then echo "== make test: FAILED:$$failed (passed: bootstrap$$(for s in lint typecheck pytest; do case " $$failed " in *" $$s "*) ;; *) printf ' %s' $$s;; esac; done))"; exit 1; \
	else echo "== make test: all passed (bootstrap lint typecheck pytest)"; fi

# The full pytest run (what `make test` runs after lint and typecheck): two pytest processes
# at once (scripts/pytest-parallel.sh; PYTEST_JOBS=1 for one, PYTEST_B_KINDS to rebalance).
# A missing interop/tests is an error under CI (after running tests/), a
# warning locally.
pytest:
	@rc=0; PYTEST="$(PYTEST)" bash scripts/pytest-parallel.sh $(PYTEST_ARGS) || rc=$$?; \
	if [ ! -d interop/tests ]; then \
	  if [ "$${CI:-}" = "true" ]; then echo "ERROR: interop/tests/ is missing; the full suite needs it" >&2; rc=1; \
	  else echo "warning: interop/tests/ not found; ran tests/ only" >&2; fi; \
	fi; exit $$rc

# Exit status 5 means "no tests collected": tolerated while tests/unit is empty.
unit:
	@$(PYTEST) tests/unit $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make unit: no unit tests collected yet"; exit 0; fi; exit $$rc

lint:
	$(PYTHON) -m ruff check $(LINT_DIRS)

typecheck:
	$(PYTHON) -m mypy --strict machinery_compat

interop: bootstrap
	$(PYTEST) interop/tests -m interop $(PYTEST_ARGS)

# The whole matrix, with every echo type on amqp+redis and sqs+redis (RESULTS.md gets
# their full tables; a plain run keeps those and notes how its subset went).
interop-full: bootstrap
	$(PYTEST) interop/tests --interop-full $(PYTEST_ARGS)

bench: bootstrap
	$(PYTHON) -m bench.redis_bench
	$(PYTHON) -m bench.amqp_bench
	$(PYTHON) -m bench.sqs_bench
	$(PYTHON) -m bench.latency_bench
	$(PYTHON) -m bench.codec_bench

# Issue #13's long rows (bench/README.md, "bench.depth_bench"): not part of `make bench`.
bench-full: bootstrap
	$(PYTHON) -m bench.depth_bench

soak: bootstrap
	$(PYTHON) -m bench.soak

demo: bootstrap
	$(PYTHON) examples/demo.py

readme-table:
	$(PYTHON) scripts/broker_backend_table.py --write

golden:
	bash interop/golden.sh

MACHINERY_VERSIONS ?= v2.0.16 v2.0.15 v1.10.8
CONFORMANCE_BROKER ?= redis://127.0.0.1:6379/15
conformance-versions:
	@mkdir -p build
	$(PYTHON) -m machinery_compat conformance --broker "$(CONFORMANCE_BROKER)" \
	  $(foreach v,$(MACHINERY_VERSIONS),--machinery $(v)) \
	  --markdown build/conformance.md --junit-xml build/conformance.xml

clean:
	rm -rf build/.bootstrap .pytest_cache .mypy_cache .ruff_cache .hypothesis
