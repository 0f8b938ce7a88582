# strata: `make demo` (set up, then run the main job on the local site) and `make test` (set up, run all tests).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
APT_PKGS := slurmctld slurmd slurm-client munge libslurm-dev runc busybox-static squashfs-tools gcc libc6-dev \
            openssh-server openssh-client iproute2

.PHONY: setup apt demo test test-fast bench
setup: apt $(VENV)/.installed

# installs the Debian packages when any of what they provide is missing (the SPANK header: libslurm-dev;
# sshd, ssh, ip: the lab's hosts)
apt:
	@for exe in slurmctld slurmd scontrol munged mungekey runc gcc mksquashfs unsquashfs busybox /usr/include/slurm/spank.h \
	           /usr/sbin/sshd ssh ssh-keygen ip nsenter unshare; do \
	  { command -v $$exe || test -e $$exe; } >/dev/null || { echo "installing Debian packages: $(APT_PKGS)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; break; }; \
	done

# torch first: 2.13.0 is a CPU wheel on local disk; pyproject's torch>=2.4 then installs nothing more.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	@$(VENV)/bin/python -m strata.demo

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -ra -m "not e2e"

bench: setup
	$(PY) bench/bench_plan.py
	$(PY) bench/bench_move.py
	$(PY) bench/bench_prolog.py
	$(PY) bench/bench_container.py
	$(PY) bench/bench_tokenize.py --mb 8
	$(PY) bench/bench_train_step.py
	$(PY) bench/bench_async_ckpt.py
	$(PY) bench/bench_lab.py
