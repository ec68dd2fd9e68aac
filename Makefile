# The two commands of the README: `make demo` and `make test`. Each does its own set-up on a
# fresh Debian 12 machine: system packages through apt-get when run as root (otherwise it names
# what to install), then a .venv with the project and its test extra installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := mosquitto libsystemd-dev pkg-config autoconf automake libtool gcc \
	python3-dev python3-venv socat iproute2 systemd debhelper dh-virtualenv lintian fakeroot dpkg-dev
STAMP := $(VENV)/.installed

.PHONY: demo test typecheck bench deb system-packages clean

demo: $(STAMP)
	$(BIN)/ipae-gateway demo

test: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q

typecheck: $(STAMP)
	$(BIN)/python -m mypy

# Benchmarks print their figures; they are not part of `make test`.
bench: $(STAMP)
	$(BIN)/python bench/codec.py --json
	$(BIN)/python bench/round_trips.py --json
	$(BIN)/python bench/queue.py --json
	$(BIN)/python bench/backlog.py --json
	$(BIN)/python bench/links.py --transport mqtt --devices 100 --rtt-ms 1500 --json
	$(BIN)/python bench/links.py --transport coap --devices 100 --rtt-ms 1500 --json
	$(BIN)/python bench/load.py --devices 1000 --json

deb: system-packages
	packaging/build-deb.sh dist

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "Missing system packages; run as root:  apt-get install $$missing" >&2; exit 1; \
	fi

$(STAMP): pyproject.toml | system-packages
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache
