# Two commands do everything on a fresh machine (see README):
#   make run    creates .venv/ if missing, then runs the main job end to end on embedded sample images
#   make test   creates .venv/ if missing, then runs the whole test suite
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# pip (never uv/poetry) so torch comes from the machine's local wheel cache, not a 3 GB download.
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/raeae demo

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) build *.egg-info
