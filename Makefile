# klbook: two commands do all the set-up on a fresh machine with Python >= 3.10.
#   make book   create .venv, install, build the HTML book from the stored (nbval-verified) outputs
#   make test   create .venv, install, run every test layer
# Also: make refresh (re-execute notebooks, store their outputs), make clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NOTEBOOKS := $(wildcard book/*.ipynb)
# Per-cell timeout for nbval (seconds); a chapter should take about a minute in all.
NBVAL_TIMEOUT ?= 600

.PHONY: install book test test-unit test-notebooks test-book refresh clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("klbook needs Python >= 3.10, found " + sys.version) if sys.version_info < (3, 10) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[book,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

book: install
	$(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

# Layer 1: the package's unit and property tests, and the checks on the project's own files.
test-unit: install
	$(PY) -m pytest tests -q

# Layer 2: every notebook re-executes and reproduces its stored outputs.
test-notebooks: install
	KLBOOK_SCALE=quick $(PY) -m pytest --nbval --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=$(NBVAL_TIMEOUT) \
	  -p no:cacheprovider -q $(NOTEBOOKS)

# Layer 3: the book builds strictly (warnings are errors; bad notebooks fail the build).
test-book: book

test: test-unit test-notebooks test-book

refresh: install
	KLBOOK_SCALE=quick $(PY) scripts/refresh_outputs.py $(NOTEBOOKS)

clean:
	rm -rf _build
