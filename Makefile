# socketloop: the two commands a new machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The demo needs only the runtime (greenlet); the test and lint extras come with `make test`.
RUNTIME_STAMP := $(VENV)/.installed-runtime
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k server -x"`.
PYTEST_ARGS ?=

.PHONY: demo test servers lint unit docs bench soak clean

$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(RUNTIME_STAMP)
	$(PY) -m socketloop demo

test: servers lint unit

# The real servers the tests start on loopback (.ci/debian-packages.txt):
# installed with apt-get when run as root; otherwise one line says what is
# skipped and how to install it.  Quiet and quick when all are installed.
servers:
	@sh .ci/install-servers

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks soak examples
	$(PY) -m ruff format --check src tests benchmarks soak examples
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# `make docs`: the HTML site (Sphinx: tutorial, guides, API reference from the
# docstrings) in docs/_build/html; any warning fails the build.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

# `make soak SECONDS=600`: 1,000 connections with injected faults through an
# echo and a relay server; prints what was exchanged and fails on any loss,
# corruption, leaked fd or thread.  SOAK_ARGS, e.g. "--loop coro --seed 7".
SECONDS ?= 60
SOAK_ARGS ?=
soak: $(STAMP)
	$(PY) soak/soak.py --seconds $(SECONDS) $(SOAK_ARGS)

# ------------------------------------------------------------ stdlib suites
# `make stdlib-tests`: CPython's own network test suites (test_socket, test_ssl,
# test_selectors, ...) without socketloop, under socketloop.patch() and under
# patch(threading=True); fails on any failure not in tests/stdlib/known_failures.txt.
# `make stdlib-tests GEVENT=1` adds gevent's monkey-patched figures (gevent goes
# into its own virtualenv, never the project's).  STDLIB_ARGS goes to the
# runner as is, e.g. STDLIB_ARGS="--modules test_socket --details".
STDLIB_ARGS ?=
GEVENT ?=
GEVENT_VENV ?= .gevent-venv
.PHONY: stdlib-tests
stdlib-tests: $(STAMP)
	@$(PY) -c "import test.support, test.test_socket" 2>/dev/null || { \
		v=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
		echo "installing the standard library's test package (libpython$$v-testsuite)"; \
		env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpython$$v-testsuite; }
	$(if $(GEVENT),[ -x $(GEVENT_VENV)/bin/python ] || { $(PYTHON) -m venv $(GEVENT_VENV) && $(GEVENT_VENV)/bin/python -m pip install --quiet gevent; })
	$(PY) tests/stdlib/run.py $(if $(GEVENT),--gevent $(GEVENT_VENV)/bin/python) $(STDLIB_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache docs/_build

# ------------------------------------------------------------------ benchmarks
# `make bench`: the peers (gevent, uvloop, trio) and matplotlib go into their
# own virtualenv, never the project's .venv.  The C load generator and the C
# reference server are optional and taken by path, e.g.
#   make bench ECHOLOAD=../shared/bench/echoload ECHOSERV=../shared/bench/echoserv
# Without ECHOLOAD the suite uses benchmarks/loadgen.py (pure Python; it says
# where it is the bottleneck).  BENCH_ARGS goes to run.py as is, e.g.
#   make bench BENCH_ARGS="--rounds 5 --servers socketloop,gevent"
BENCH_VENV  ?= .bench-venv
BENCH_PY    := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_PEERS := gevent uvloop trio matplotlib
# WSGI rows (benchmarks/wsgi_bench.py): gunicorn and the parser; packaging for gunicorn -k gevent
BENCH_PEERS += gunicorn httptools packaging
ECHOLOAD ?=
ECHOSERV ?=
BENCH_ARGS ?=
BENCH_TOOLS = $(if $(ECHOLOAD),--echoload $(ECHOLOAD)) $(if $(ECHOSERV),--echoserv $(ECHOSERV))

.PHONY: bench-quick bench-hosted

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -m pip install --quiet -e .
	@for p in $(BENCH_PEERS); do \
		$(BENCH_PY) -m pip install --quiet $$p || echo "warning: $$p did not install: its rows are skipped"; \
	done
	touch $(BENCH_STAMP)

# Full matrix (about 30 minutes on 2 cores), then the micro-benchmarks, then
# the README table.  run.py installs wrk with apt-get when it can.
bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/run.py $(BENCH_TOOLS) $(BENCH_ARGS)
	$(BENCH_PY) benchmarks/micro.py
	$(BENCH_PY) benchmarks/wsgi_bench.py --rounds 3 --apps hello,backend --workers 1,2 --out benchmarks/results/wsgi.json
	$(BENCH_PY) benchmarks/update_readme.py

# The hosted rows alone (issue 11's targets, about 3 minutes): socketloop native
# and hosted on asyncio and uvloop, beside the asyncio and uvloop streams
# servers, in one interleaved run; the README shows it while the full run in
# benchmarks/results/latest.json has no hosted rows.
bench-hosted: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/run.py $(BENCH_TOOLS) --rounds 4 --workloads pp64-100 \
		--servers socketloop,socketloop-on-asyncio,socketloop-on-uvloop,asyncio-streams,uvloop-streams \
		--out benchmarks/results/hosted $(BENCH_ARGS)
	$(BENCH_PY) benchmarks/update_readme.py

# A smoke run of everything (a few minutes); results go to
# benchmarks/results/raw/quick/ and the README is left alone.
bench-quick: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/run.py --quick --out benchmarks/results/raw/quick $(BENCH_TOOLS) $(BENCH_ARGS)
	$(BENCH_PY) benchmarks/micro.py --quick --out benchmarks/results/raw/quick
