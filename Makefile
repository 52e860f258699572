SHELL := /bin/bash
# flocker_async developer entry points.  Run as root on Debian 12.
#   make test   install what the tests need, run every test, print "N passed, M failed"
#   make demo   a two-node lab cluster on this machine, the MySQL move (see README)

PYTHON ?= python3
VENV := .venv
APT_PACKAGES := zfs-fuse btrfs-progs iptables docker.io debootstrap \
	mariadb-client socat conntrack iproute2 busybox-static openssh-client \
	openssh-server kmod ruby shellcheck
TRIAL_ARGS ?= tests

.PHONY: test deps apt-deps venv demo bench clean

test: deps
	@rm -f .test.log
	@set -o pipefail; $(VENV)/bin/python -m twisted.trial $(TRIAL_ARGS) 2>&1 | tee .test.log; \
	status=$$?; $(VENV)/bin/python .ci/trial_summary.py .test.log; exit $$status

deps: apt-deps venv

apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --config-settings editable_mode=compat -e '.[test]'
	touch $@

demo: deps
	$(VENV)/bin/python -m flocker_async.lab.demo $(if $(KEEP),--keep,)

clean:
	rm -rf $(VENV) _trial_temp* .test.log *.egg-info
