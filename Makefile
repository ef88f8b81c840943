# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create the virtual environment on first use; every install goes through
# constraints.txt so torch stays the local CPU build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo

.PHONY: demo test install clean-demo

$(BIN)/tagseg: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/tagseg

demo: $(BIN)/tagseg
	$(BIN)/tagseg data synth $(DEMO)/data --count 200
	$(BIN)/tagseg data check $(DEMO)/data
	$(BIN)/tagseg prior $(DEMO)/data $(DEMO)/run --split train
	$(BIN)/tagseg train-cam $(DEMO)/data $(DEMO)/run --set epochs=6 --set crop_size=160 --set lr=0.001
	$(BIN)/tagseg make-cam $(DEMO)/data $(DEMO)/run --set "scales=[1.0, 1.5]"
	$(BIN)/tagseg eval $(DEMO)/run/make_cam $(DEMO)/data --split train

test: $(BIN)/tagseg
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO)
