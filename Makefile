# pico-llm course kit. Two commands on a fresh clone:  make run  |  make test
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch 2.13.0 is the version the kit is tested with; override e.g. TORCH="torch==2.13.0 --index-url ..."
TORCH  ?= torch==2.13.0
# constraints.txt pins every package to the version the kit is tested with (make lock writes it).
# `make setup CONSTRAINTS=` or PICOLLM_UNPINNED=1 installs the newest versions pyproject.toml allows
# instead (also needed for a TORCH of another version than the pinned one).
CONSTRAINTS ?= $(if $(filter-out 0 false no,$(PICOLLM_UNPINNED)),,constraints.txt)
PIN    := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint test-unit test-notebooks test-browser lab bench report exercises doctor lock clean-cache \
	instructor test-instructor grade

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIN) "$(TORCH)"
	$(PY) -m pip install --quiet $(PIN) -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (pico-llm kit)" >/dev/null
	$(PY) -m picollm_helpers.tokenizer
	touch $(STAMP)

# The main job: execute the lessons in order (default profile: laptop, or $$PICOLLM_PROFILE),
# writing the executed notebooks in place and their figures to figures/.
run: $(STAMP)
	@if [ -z "$(NOTEBOOKS)" ]; then echo "No notebooks in notebooks/ yet: nothing to run."; fi
	@for nb in $(NOTEBOOKS); do \
		echo "== $$nb (profile: $${PICOLLM_PROFILE:-laptop})"; \
		$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=-1 "$$nb" || exit 1; \
	done

test: lint test-unit test-notebooks

# ruff, configured in pyproject.toml: unused or undefined names, style errors, import order; the
# lessons' code cells too (ruff reads .ipynb)
lint: $(STAMP)
	$(VENV)/bin/ruff check picollm_helpers tests tests_browser tests_instructor notebooks

test-unit: $(STAMP)
	$(VENV)/bin/pytest -q tests

# The lessons under nbval in the smoke profile: every cell must run, and cells marked
# NBVAL_CHECK_OUTPUT must reproduce their committed output. Figures and results files go to
# temporary folders, so the committed laptop-profile figures and results stay as they are.
test-notebooks: $(STAMP)
	@if [ -z "$(NOTEBOOKS)" ]; then echo "No notebooks to check yet."; else \
		figs=$$(mktemp -d) && res=$$(mktemp -d) && PICOLLM_PROFILE=smoke PICOLLM_FIGURES=$$figs PICOLLM_RESULTS=$$res $(VENV)/bin/pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
			-o testpaths= $(NOTEBOOKS); fi

# The explorers of lessons 03, 07 and 09 in JupyterLab, driven in headless Chromium (Playwright):
# Run All, move the controls, check what they redraw. Screenshots: test-artifacts/browser/.
# Installs Debian's chromium on first use (Playwright's own browser download is not used).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(STAMP)
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	PICOLLM_CHROMIUM=$(CHROMIUM) $(VENV)/bin/pytest -q -p no:cacheprovider tests_browser

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) -m picollm_helpers.bench

# exercises/NN_*.ipynb: the student build of the lessons (each marked region a stub; checks say
# when the student's code is right). tests/test_exercises.py checks that it is up to date and runs.
exercises: $(STAMP)
	$(PY) -m picollm_helpers.exercises

# Grading (instructor/README.md). The instructor extra (nbgrader) on top of the kit, pinned by
# constraints.txt and instructor/constraints.txt (the packages only nbgrader needs).
INSTRUCTOR_STAMP := $(VENV)/.installed-instructor
INSTRUCTOR_PIN := $(if $(CONSTRAINTS),$(PIN) -c instructor/constraints.txt)
instructor: $(INSTRUCTOR_STAMP)

$(INSTRUCTOR_STAMP): $(STAMP) pyproject.toml instructor/constraints.txt
	$(PY) -m pip install --quiet $(INSTRUCTOR_PIN) -e ".[dev,instructor]"
	touch $(INSTRUCTOR_STAMP)

# The nbgrader round trip: generate_assignment on one lesson, autograde three submissions, their scores.
test-instructor: $(INSTRUCTOR_STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests_instructor

# grades.csv from a folder of collected student notebooks: make grade SUBMISSIONS=collected/
# (each runs headless in the smoke profile, GRADE_TIMEOUT seconds at most).
GRADES ?= grades.csv
GRADE_TIMEOUT ?= 300
grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=folder [GRADES=grades.csv] [GRADE_TIMEOUT=300]"; exit 2; }
	$(PY) -m picollm_helpers.grade "$(SUBMISSIONS)" --out "$(GRADES)" --timeout $(GRADE_TIMEOUT)

# results/REPORT.md (verdict counts, one row per claim, details) and results/report_card.png, from
# every lesson's results/NN_*.json; also the README's minutes table when the results are laptop ones.
report: $(STAMP)
	$(PY) -m picollm_helpers.results

# Is this install ready for the lessons? Versions, threads, memory, device, offline files, widgets,
# each with its fix. Runs without the install too (then it says what is missing).
doctor:
	@if [ -x $(PY) ]; then $(PY) -m picollm_helpers.doctor; else $(PYTHON) -m picollm_helpers.doctor; fi

# Rewrite constraints.txt from .venv (after the tests pass with newer versions).
lock: $(STAMP)
	$(PY) -m picollm_helpers.doctor --lock

clean-cache:
	rm -rf .cache outputs
