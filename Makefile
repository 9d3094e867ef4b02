# The two set-up-and-run commands of README.md. Each creates or updates .venv first.
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: run test dry-run clean

# Reinstall whenever the pinned dependencies change.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)  ## run the default study (config.yaml) on this machine
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(STAMP)  ## run the whole test suite
	$(VENV)/bin/python -m pytest

dry-run: $(STAMP)
	$(VENV)/bin/snakemake -n --cores $(CORES)

clean:  ## remove the default study's outputs (not the environment)
	rm -rf results logs .snakemake
