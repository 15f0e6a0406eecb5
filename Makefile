# Every target sets up what it needs from nothing: a .venv with requirements-dev.txt, the CDK CLI pinned in
# package-lock.json (run with npx), and, for the real-boot tests, the Debian packages in scripts/setup-debian.sh.
SHELL := /bin/bash
PY := .venv/bin/python
# The machine's python3 (read before PATH puts the venv first, and handed to sub-makes): the e2e image builder
# needs only the standard library and runs while the venv is being made.
ifndef HOST_PY
HOST_PY := $(shell command -v python3)
endif
export HOST_PY
VENV_STAMP := .venv/.installed
NODE_STAMP := node_modules/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_CLI_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1
# cdk.json runs `python3 app.py`: the venv's python3 must come first.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo synth test test-fast lint storm bench dist clean debian-packages boot-tools e2e-images

setup: $(VENV_STAMP) $(NODE_STAMP)

# The venv is a plain `python3 -m venv` (pip included, for `pip install -r requirements.txt` as a user runs it);
# uv fills it from the same pins: on two cores pip took about 100 s and 100 CPU-seconds, the longest step of
# `make test`'s set-up, and uv (unpacking in parallel, byte-compiling on both cores) about a third of that.
UV_VERSION := 0.13.8
$(VENV_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	.venv/bin/uv pip install -q --python $(PY) --compile-bytecode -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

debian-packages:
	bash scripts/setup-debian.sh

synth: setup
	rm -rf cdk.out
	npx --no-install cdk synth --no-notices --quiet
	$(PY) -m cdk_audit_backlog report cdk.out

# Deploys the example app to moto's server on localhost with the real CDK CLI (bootstrap + deploy), reads
# every launch back with boto3 and prints the limit in its stored user data; stops the server at the end.
demo: setup
	$(PY) scripts/demo.py

# pytest-xdist: the qemu boots in two groups of their own (two guests at a time, from the start of the run),
# every other test module on the third worker and on the boot workers once their boots are done (see
# tests/conftest.py and the README's "what each boot proves"). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3
# ruff (pycodestyle, pyflakes, bugbear; configured in pyproject.toml) over the whole repository.
lint: setup
	.venv/bin/ruff check .

# The set-up steps run side by side (the venv's pip, npm, the boot tools, and the e2e images of both suites,
# which need only the Debian packages and the standard library), so the boots start as soon as pytest does.
test:
	$(MAKE) --no-print-directory -j4 --output-sync=target setup lint boot-tools e2e-images
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

# Every image variant of both suites (cached by key under .cache/e2e: a no-op when nothing changed). At a lower
# priority: on two cores the venv's pip (one core, about 100 s) is the longest set-up step, and the two
# mmdebstrap runs beside it still end before it does.
e2e-images: debian-packages
	nice -n 10 $(HOST_PY) -m e2e.image --all

# Real Debian 12 augenrules, gawk and busybox awk for tests/test_boot_script.py, unpacked, not installed.
boot-tools: .cache/boot-tools/.stamp

.cache/boot-tools/.stamp: tests/boot/fetch-tools.sh
	bash tests/boot/fetch-tools.sh .cache/boot-tools

# make storm SUITE=trixie: the same storm on Debian 13's kernel 6.12 (default bookworm, Debian 12's 6.1).
SUITE ?= bookworm
storm: setup debian-packages
	$(PY) -m e2e.storm --suite $(SUITE)

bench: setup
	$(PY) benchmarks/synth_overhead.py
	-$(PY) benchmarks/sample_cpu.py  # needs a storm boot (make storm or make test) on this machine

# The release: the sdist, and the wheel built from it, in dist/. --no-isolation builds with the setuptools and
# wheel pinned in requirements-dev.txt (the same build tools on every machine, no download). twine checks the
# metadata PyPI renders; check_dist.py that both hold every file of the package, py.typed, data/ and userdata/
# included. tests/test_release.py installs such a wheel outside the repository and synthesizes with it.
dist: $(VENV_STAMP)
	rm -rf dist build
	$(PY) -m build --quiet --no-isolation --outdir dist .
	$(PY) -m twine check --strict dist/*
	$(PY) scripts/check_dist.py dist

clean:
	rm -rf cdk.out .venv node_modules build dist constructs/*.egg-info .pytest_cache .hypothesis
