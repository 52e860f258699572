SHELL := /bin/bash
# flocker_async developer entry points.  Run as root on Debian 12.
#   make test   install what the tests need, run every test, print "N passed, M failed"
#   make demo   a two-node lab cluster on this machine, the MySQL move (see README)
#   make soak   the chaos soak: DURATION seconds of faults and moves, SEED (see README)

PYTHON ?= python3
VENV := .venv
APT_PACKAGES := zfs-fuse btrfs-progs iptables docker.io debootstrap \
	mariadb-client socat conntrack iproute2 busybox-static openssh-client \
	openssh-server kmod ruby shellcheck
# The fault tests (daemons killed mid-move, zfs recv killed, pools filled)
# run last, in a process of their own: what they do to the shared zfs-fuse
# daemon can never leave another test waiting on it.  The soak's 3-minute
# version with a fixed seed (tests.soak) runs there too, after them: it
# restarts zfs-fuse.
TRIAL_ARGS ?= tests.unit tests.functional tests.acceptance
FAULT_ARGS ?= tests.faults tests.soak

# mypy (with mypy-zope; settings in setup.cfg) checks flocker_async first.
# Its errors fail the build and count as one failure in the closing line;
# MYPY_STRICT=0 only reports them (in full in .test-mypy.log).
MYPY_STRICT ?= 1

.PHONY: test deps apt-deps venv demo bench soak clean

test: deps
	@rm -f .test.log .test-faults.log .test-mypy.log
	@set -o pipefail; status=0; \
	if $(VENV)/bin/mypy flocker_async > .test-mypy.log 2>&1; then \
	  echo "PASSED (successes=1)" >> .test-mypy.log; \
	else \
	  echo "FAILED (errors=1)" >> .test-mypy.log; \
	  if [ "$(MYPY_STRICT)" = 1 ]; then cat .test-mypy.log; status=1; \
	  else echo "mypy: $$(tail -n 2 .test-mypy.log | head -n 1) (see .test-mypy.log; MYPY_STRICT=0 did not fail the build)"; fi; \
	fi; \
	$(VENV)/bin/python -m twisted.trial --temp-directory=_trial_temp $(TRIAL_ARGS) 2>&1 | tee .test.log || status=1; \
	if [ -n "$(FAULT_ARGS)" ]; then \
	  $(VENV)/bin/python -m twisted.trial --temp-directory=_trial_temp_faults $(FAULT_ARGS) 2>&1 | tee .test-faults.log || status=1; \
	fi; \
	$(VENV)/bin/python .ci/trial_summary.py .test.log $(if $(FAULT_ARGS),.test-faults.log,) \
	  $(if $(filter 1,$(MYPY_STRICT)),.test-mypy.log,) || status=1; \
	exit $$status

deps: apt-deps venv

# Packages are installed without starting their services (policy-rc.d):
# a docker.io that started its own dockerd on the host would add a bridge and
# firewall rules to this machine's network.  Tests start what they need in
# namespaces of their own.
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  guard=""; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\n# installed by flocker_async make: start no service\nexit 101\n' > /usr/sbin/policy-rc.d; \
	    chmod 755 /usr/sbin/policy-rc.d; guard=1; \
	  fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  status=$$?; \
	  if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  exit $$status; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --config-settings editable_mode=compat -e '.[test]'
	touch $@

BENCH_OUT ?= bench-results

bench: deps
	@mkdir -p $(BENCH_OUT)
	$(VENV)/bin/python bench/transfer.py --json $(BENCH_OUT)/transfer.json
	$(VENV)/bin/python bench/downtime.py --json $(BENCH_OUT)/downtime.json
	$(VENV)/bin/python bench/converge.py --json $(BENCH_OUT)/converge.json
	$(VENV)/bin/python bench/failover.py --json $(BENCH_OUT)/failover.json
	@$(VENV)/bin/python bench/report.py $(BENCH_OUT)/transfer.json \
	  $(BENCH_OUT)/downtime.json $(BENCH_OUT)/converge.json \
	  $(BENCH_OUT)/failover.json

# The chaos soak on a 3-node lab of its own: exits 0 only when nothing
# acknowledged was lost outside a take-over's stated window and every
# check held (bench/soak.py).
DURATION ?= 600
SEED ?= 1

soak: deps
	$(VENV)/bin/python bench/soak.py --duration $(DURATION) --seed $(SEED)

demo: deps
	$(VENV)/bin/python -m flocker_async.lab.demo $(if $(KEEP),--keep,)

clean:
	rm -rf $(VENV) _trial_temp* .test.log *.egg-info
