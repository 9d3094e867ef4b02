# The set-up-and-run commands of README.md. Each creates or updates .venv first.
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: run test lint dry-run clean

# The exact tested set (constraints.txt, a pip constraints file) within pyproject's ranges;
# reinstall whenever either changes.
$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

run: $(STAMP)  ## run the default study (config.yaml) on this machine
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(STAMP) lint  ## the linters, then the whole test suite
	$(VENV)/bin/python -m pytest

# Python: ruff's lint and formatting; the workflow layer: snakefmt's formatting and Snakemake's
# own linter (default config).
lint: $(STAMP)  ## check formatting and lint of the library, tests, scripts and the workflow
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint

dry-run: $(STAMP)
	$(VENV)/bin/snakemake -n --cores $(CORES)

clean:  ## remove the default study's outputs (not the environment)
	rm -rf results .snakemake
