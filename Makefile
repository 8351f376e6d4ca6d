# Two commands matter (see README): `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean-cache

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/affpipe demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/extract.py
	$(PY) bench/train.py --frames 300000
	$(PY) bench/cache.py
	$(PY) bench/asr.py
	$(PY) bench/cli.py

clean-cache:
	rm -rf cache/shards cache/locks cache/runs cache/ledger.jsonl
