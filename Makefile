# Two entry points for a fresh machine: `make demo` and `make test` (and `make docs` for the site).
# Both create the virtual environment on first use; every install goes through
# constraints.txt so torch stays the local CPU build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo

.PHONY: demo test docs install clean-demo readme-picture

$(BIN)/tagseg: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# an environment made before the switch to the contrib build of OpenCV: the two builds share cv2
	$(BIN)/python -m pip uninstall --quiet --yes opencv-python-headless 2>/dev/null || true
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/tagseg

demo: $(BIN)/tagseg
	$(BIN)/tagseg data synth $(DEMO)/data --count 200 --max-objects 2 --object-size 0.3 0.6
	$(BIN)/tagseg data check $(DEMO)/data
	$(BIN)/tagseg run recipes/demo_silop.yaml --set dataset=$(DEMO)/data --set run=$(DEMO)/run \
		--set upper_bound_run=$(DEMO)/run_fully_supervised
	$(BIN)/tagseg run recipes/demo_fully_supervised.yaml --set dataset=$(DEMO)/data \
		--set run=$(DEMO)/run_fully_supervised
	$(BIN)/tagseg report $(DEMO)/run

# The README's picture (docs/images/demo_overview.png): the demo report's overview.png in 256 colours.
readme-picture: $(DEMO)/run/report/overview.png
	$(BIN)/python -c "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('P', palette=Image.ADAPTIVE).save(sys.argv[2], optimize=True)" $< docs/images/demo_overview.png

test: $(BIN)/tagseg
	$(BIN)/python -m pytest -q

# The documentation site, offline, into site/ (open site/index.html); fails on any warning.
docs: $(BIN)/tagseg
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean-demo:
	rm -rf $(DEMO)
