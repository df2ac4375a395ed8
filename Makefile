# Frame-indexed video shards -> DALI sandwich triplets -> T-CoRe.
# `make demo` runs the main job on the embedded sample data; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-$(shell cat setup.cfg setup.py | sha1sum | cut -c1-12)

# sharding
DATA ?= sample
ROOT ?=
OUT  ?= data/sample_shards
CSV ?=
SPLITS ?=
FPS ?=
SIZE ?=
QUALITY ?=
WORKERS ?=
SHARD_MB ?=
MAX_PER_SHARD ?=
MIN_FRAMES ?=
LIMIT ?=
opt = $(if $(strip $(2)),--$(1) "$(strip $(2))")
SHARD_FLAGS = --data $(DATA) --out "$(OUT)" $(call opt,root,$(ROOT)) $(call opt,csv,$(CSV)) \
  $(call opt,splits,$(SPLITS)) $(call opt,fps,$(FPS)) $(call opt,size,$(SIZE)) \
  $(call opt,quality,$(QUALITY)) $(call opt,workers,$(WORKERS)) $(call opt,shard-mb,$(SHARD_MB)) \
  $(call opt,max-per-shard,$(MAX_PER_SHARD)) $(call opt,min-frames,$(MIN_FRAMES)) $(call opt,limit,$(LIMIT))

SAMPLE_SHARDS := data/sample_shards
SAMPLE_FLAGS := --data sample --out $(SAMPLE_SHARDS) --shard-mb 4

.PHONY: setup demo test test-fast lint shards inspect bench-shards profile eval clean help

help:
	@echo "make demo | make test | make shards DATA=kinetics ROOT=... OUT=... | make inspect OUT=... | make bench-shards"

setup: $(STAMP)
$(STAMP): setup.cfg setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.setup-* && touch $@

demo: setup
	$(PY) -m shards $(SAMPLE_FLAGS)
	$(PY) -m shards.inspect $(SAMPLE_SHARDS) --verify

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) -m ruff check .

shards: setup
	$(PY) -m shards $(SHARD_FLAGS)

inspect: setup
	$(PY) -m shards.inspect "$(OUT)" $(if $(VERIFY),--verify)

bench-shards: setup
	@command -v ffmpeg >/dev/null || (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null)
	$(PY) -m tools.bench_shards

# loader profiling (ROOT = the source collection, for the mp4 loader; defaults to the sample tree)
SHARDS ?= $(SAMPLE_SHARDS)
LOADERS ?= dali,dali-range,torch,mp4,ffcv
WORKLOADS ?= tcore,simple
BATCHES ?=
BATCH ?=
JSON ?=
PNG ?=
PROFILE_FLAGS = --shards "$(SHARDS)" --loaders $(LOADERS) --workloads $(WORKLOADS) \
  $(call opt,batches,$(BATCHES)) $(call opt,batch,$(BATCH)) $(call opt,json,$(JSON)) \
  $(call opt,png,$(PNG)) $(call opt,root,$(ROOT))

profile: setup ffcv
	$(PY) -m tools.profile_loader $(PROFILE_FLAGS)

# FFCV (optional extra, the fastest published CPU image loader) for the profiler's ffcv peer
.PHONY: ffcv
ffcv: setup
	@if echo "$(LOADERS)" | grep -q ffcv && ! $(PY) -c "import ffcv" 2>/dev/null; then \
	  (command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq libopencv-dev libturbojpeg0-dev >/dev/null) ; \
	  $(PY) -m pip install --quiet --no-deps ffcv==1.0.2 && \
	  $(PY) -m pip install --quiet numba assertpy fastargs pytorch_pfn_extras terminaltables tqdm opencv-python-headless \
	  || echo "ffcv could not be installed: the profiler will skip it"; fi

# evaluation by label propagation (DAVIS-2017 / JHMDB / VIP)
CKPT ?=
TASK ?= davis
RESULTS ?=
DEVICE ?=
EVAL_ARGS ?=
eval: setup
	$(PY) -m tools.eval_propagation --task $(TASK) --root "$(ROOT)" $(call opt,ckpt,$(CKPT)) \
	  $(if $(filter command line,$(origin OUT)),--out "$(OUT)") $(call opt,results,$(RESULTS)) \
	  $(call opt,device,$(DEVICE)) $(EVAL_ARGS)

clean:
	rm -rf data/sample_shards data/sample_kinetics .pytest_cache
