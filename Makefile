# Shortcuts for the scripts under scripts/ (the scripts need only bash and Python 3.10+).
#   make book                      set up .venv, build the HTML book into _build/html
#   make test                      every test, as CI runs it (scripts/test.sh)
#   make lock                      regenerate requirements/lock.txt (UPGRADE=1: newest releases)
#   make colab-check               lmkit as Colab installs it (non-editable, next to transformers 4.x)
#   make check-oldest              unit tests with the oldest releases pyproject.toml allows
#   make check-latest              unit tests with the newest releases, unlocked (drift check)
#   make format                    ruff format, then ruff check --fix (tests/test_style.py checks both)
#   make mutate                    mutation testing of lmkit's core (mutmut; hours on 2 cores)
#   make execute NB=book/chNN_x.ipynb   execute one notebook in place, top to bottom, offline
#   make nbval NB=book/chNN_x.ipynb     re-check one notebook's NBVAL_CHECK_OUTPUT cells
#   make status                    re-render book/status.md from book/status.json
#   make lab                       open the chapters in JupyterLab
#   make clean                     remove _build (the execution cache too), _vendor (fetched JavaScript), .venv-latest, .venv-oldest .venv-oldest

VENV ?= .venv
PY := $(VENV)/bin/python
NB ?=
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

.PHONY: format setup book test lock colab-check check-oldest check-latest mutate execute nbval status lab clean

setup:
	bash scripts/setup.sh

book:
	bash scripts/book.sh

test:
	bash scripts/test.sh

lock: setup
	bash scripts/lock.sh

colab-check:
	bash scripts/colab_check.sh

check-oldest:
	bash scripts/check_oldest.sh

check-latest:
	bash scripts/check_latest.sh

mutate:
	bash scripts/mutate.sh

execute: setup
	@test -n "$(NB)" || { echo "usage: make execute NB=book/chNN_slug.ipynb"; exit 2; }
	$(PY) scripts/execute_notebook.py $(NB)

nbval: setup
	@test -n "$(NB)" || { echo "usage: make nbval NB=book/chNN_slug.ipynb"; exit 2; }
	$(OFFLINE) $(PY) -m pytest -p tests.nbval_plugin --nbval-lax --nbval-current-env $(NB)

status:
	$(PY) tests/notebook_status.py

lab: setup
	$(VENV)/bin/jupyter lab book/

clean:
	rm -rf _build _vendor .venv-latest .venv-oldest mutants
