# sam3d developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build to install; override for another CUDA/CPU wheel, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# Test data only: LiTS case 117 (tests/test_lits117.py). --no-deps: its pinned torch 1.7 stack is never installed.
LITS117_SPEC ?= liver-ct-segmentation-package==1.6.0

.DEFAULT_GOAL := help
.PHONY: help install demo test test-slow lint docs format clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,docs,nnunet]"
	$(BIN)/python -m pip install -q --no-deps $(LITS117_SPEC) || \
		echo "warning: could not install $(LITS117_SPEC); the LiTS case 117 tests will skip" >&2
	touch $(STAMP)

install: $(STAMP) ## create or refresh .venv with sam3d, its dev tools and the docs builder

DEMO ?= demo_output
DEMO_ARGS = -c configs/synthetic.yaml --data.root $(DEMO)/data --data.cache_dir $(DEMO)/cache \
	--trainer.logger.init_args.save_dir $(DEMO)/runs

demo: $(STAMP) ## the main job on built-in synthetic data: make data, train the tiny network, test it (CPU)
	rm -rf $(DEMO)
	$(BIN)/sam3d make-synthetic $(DEMO)/data --num_cases 24 --seed 0
	$(BIN)/sam3d fit $(DEMO_ARGS)
	$(BIN)/sam3d test $(DEMO_ARGS) --ckpt_path best --evaluation.first_click center

test: $(STAMP) ## the default test suite (slow tests excluded)
	WANDB_MODE=disabled $(BIN)/python -m pytest

test-slow: $(STAMP) ## only the slow tests
	WANDB_MODE=disabled $(BIN)/python -m pytest -m slow

lint: $(STAMP) ## ruff lint + format check, mypy on the whole package
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: $(STAMP) ## build the documentation site (mkdocs.yml, docs/) with --strict into a temporary folder
	site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && \
		NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$site"

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove build and test artefacts (keeps .venv)
	rm -rf build *.egg-info .pytest_cache .ruff_cache .mypy_cache
