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
ENGINE ?=
RAY_ADDRESS ?=
MAX_RETRIES ?=
STAGE ?=
opt = $(if $(strip $(2)),--$(1) "$(strip $(2))")
SHARD_FLAGS = --data $(DATA) --out "$(OUT)" $(call opt,root,$(ROOT)) $(call opt,csv,$(CSV)) \
  $(call opt,splits,$(SPLITS)) $(call opt,fps,$(FPS)) $(call opt,size,$(SIZE)) \
  $(call opt,quality,$(QUALITY)) $(call opt,workers,$(WORKERS)) $(call opt,shard-mb,$(SHARD_MB)) \
  $(call opt,max-per-shard,$(MAX_PER_SHARD)) $(call opt,min-frames,$(MIN_FRAMES)) $(call opt,limit,$(LIMIT)) \
  $(call opt,engine,$(ENGINE)) $(call opt,ray-address,$(RAY_ADDRESS)) $(call opt,max-retries,$(MAX_RETRIES)) $(call opt,stage,$(STAGE))
RAY_INSTALL = $(PY) -c "import ray" 2>/dev/null || $(PY) -m pip install --quiet -e '.[ray]'
REMOTE_INSTALL = $(PY) -c "import s3fs, moto" 2>/dev/null || $(PY) -m pip install --quiet -e '.[remote]'


SAMPLE_SHARDS := data/sample_shards
SAMPLE_FLAGS := --data sample --out $(SAMPLE_SHARDS) --shard-mb 4

.PHONY: setup setup-cuda12 demo test test-fast lint shards inspect bench-shards profile profile-kinetics-like train learn-check bench-train gpu-check eval clean help

help:
	@echo "make demo | make test | make shards DATA=kinetics ROOT=... OUT=... | make inspect OUT=... | make bench-shards"

setup: $(STAMP)
$(STAMP): setup.cfg setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# DALI's CUDA 12 and CUDA 13 wheels install the same package: never keep both
	@$(PY) -m pip uninstall --quiet -y nvidia-dali-cuda120 2>/dev/null || true
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.setup-* && touch $@

# The CUDA 12 pairing for NVIDIA drivers older than 580 (torch's CUDA 13 build needs >= 580):
# torch from the PyTorch CUDA 12 index and DALI's cuda120 wheel in place of the cuda130 one. Run
# again after any `make setup` that reinstalls (setup.cfg changed).
TORCH_CUDA12_INDEX ?= https://download.pytorch.org/whl/cu128
setup-cuda12: setup
	$(PY) -m pip uninstall --quiet -y torch torchvision nvidia-dali-cuda130
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 --index-url $(TORCH_CUDA12_INDEX)
	$(PY) -m pip install --quiet nvidia-dali-cuda120==2.4.0
	$(PY) -c "import torch, nvidia.dali as d; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| DALI', d.__version__)"

DEMO := data/demo
DEMO_EVAL = --task davis --root $(DEMO)/digits/davis --device cpu "input_size=[256,320]"
demo: setup
	$(PY) -m shards $(SAMPLE_FLAGS)
	$(PY) -m shards.inspect $(SAMPLE_SHARDS) --verify
	@mkdir -p $(DEMO)
	$(PY) -m tools.profile_loader --shards $(SAMPLE_SHARDS) --loaders dali,dali-range,torch,mp4 \
	  --batch 16 --batches 2 --repeats 2 --json $(DEMO)/profile.json --png $(DEMO)/profile.png
	$(MAKE) --no-print-directory train SHARDS=$(SAMPLE_SHARDS) CONFIG=configs/tcore_tiny_cpu.yaml \
	  OUT=$(DEMO)/train_init STEPS=0 GPUS=0
	$(MAKE) --no-print-directory train SHARDS=$(SAMPLE_SHARDS) CONFIG=configs/tcore_tiny_cpu.yaml \
	  OUT=$(DEMO)/train STEPS=100 GPUS=0
	$(PY) -m evaluation.digits $(DEMO)/digits --train 0 --val 0 --davis 4
	$(PY) -m tools.eval_propagation --ckpt $(DEMO)/train_init/teacher.pth $(DEMO_EVAL) --out $(DEMO)/eval_davis_init
	$(PY) -m tools.eval_propagation --ckpt $(DEMO)/train/teacher.pth $(DEMO_EVAL) --out $(DEMO)/eval_davis_trained
	$(PY) -m tools.demo_summary $(SAMPLE_SHARDS) $(DEMO)

test: setup
	@$(RAY_INSTALL)
	@$(REMOTE_INSTALL)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) -m ruff check .

shards: setup
	@$(if $(filter ray,$(ENGINE)),$(RAY_INSTALL))
	$(PY) -m shards $(SHARD_FLAGS)

inspect: setup
	$(PY) -m shards.inspect "$(OUT)" $(if $(VERIFY),--verify) $(if $(QUICK),--verify --quick)

bench-shards: setup
	@command -v ffmpeg >/dev/null || (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null)
	$(PY) -m tools.bench_shards

SHARDS ?= $(SAMPLE_SHARDS)

# loader profiling (ROOT = the source collection, for the mp4 loader; defaults to the sample tree)
LOADERS ?= dali,dali-range,dali-range-unchecked,dali-host,dali-host-unchecked,torch,mp4,ffcv
WORKLOADS ?= tcore,simple
BATCHES ?=
BATCH ?=
JSON ?=
PNG ?=
PROFILE_FLAGS = --shards "$(SHARDS)" --loaders $(LOADERS) --workloads $(WORKLOADS) \
  $(call opt,batches,$(BATCHES)) $(call opt,batch,$(BATCH)) $(call opt,json,$(JSON)) \
  $(call opt,png,$(PNG)) $(call opt,root,$(ROOT))

profile: setup ffcv video
	$(PY) -m tools.profile_loader $(PROFILE_FLAGS)

# the same profile on Kinetics-shaped clips (10 s, 340x256, 25 fps, x264 default GOP)
KLIKE := data/kinetics_like
profile-kinetics-like: setup
	$(PY) -m shards.kinetics_like $(KLIKE)/videos
	$(PY) -m shards --data kinetics --root $(KLIKE)/videos --out $(KLIKE)/shards --shard-mb 8
	$(MAKE) --no-print-directory profile SHARDS=$(KLIKE)/shards ROOT=$(KLIKE)/videos

# decord2 (optional extra "video", the fastest decoder of clip frames measured by bench-decoders) for the mp4 peers;
# without it they decode with PyAV
.PHONY: video bench-decoders
video: setup
	@if echo "$(LOADERS)" | grep -q mp4 && ! $(PY) -c "import decord" 2>/dev/null; then \
	  $(PY) -m pip install --quiet -e '.[video]' || echo "decord2 could not be installed: the mp4 peers use PyAV"; fi

# the mp4 decoders on the same frame sets (torchcodec is measured when installed, with FFmpeg's libraries)
bench-decoders: setup
	$(PY) -m tools.bench_video_decoders --root $(or $(ROOT),data/sample_kinetics) $(call opt,json,$(JSON))

# FFCV (optional extra, the fastest published CPU image loader) for the profiler's ffcv peer
.PHONY: ffcv
ffcv: setup
	@if echo "$(LOADERS)" | grep -q ffcv && ! $(PY) -c "import ffcv" 2>/dev/null; then \
	  (command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq libopencv-dev libturbojpeg0-dev >/dev/null) ; \
	  $(PY) -m pip install --quiet --no-deps ffcv==1.0.2 && \
	  $(PY) -m pip install --quiet numba assertpy fastargs pytorch_pfn_extras terminaltables tqdm opencv-python-headless \
	  || echo "ffcv could not be installed: the profiler will skip it"; fi

# training (T-CoRe): one process per GPU under torchrun; without a GPU one CPU process (gloo).
# GPUs are counted only when CUDA can start (device_count() asks NVML, which may see GPUs that an
# old driver cannot run); GPUS=0 runs on the CPU (train.device=cpu), GPUS>=1 requires CUDA.
GPUS ?= $(shell $(PY) -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
NODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
RESTARTS ?= 0
CONFIG ?= $(if $(filter 0,$(GPUS)),configs/tcore_tiny_cpu.yaml,configs/tcore_vits16_k400.yaml)
STEPS ?=
# every key.sub=value on the make command line is passed through to the trainer
TRAIN_OVERRIDES = $(strip $(foreach v,$(filter-out .%,$(.VARIABLES)),$(if $(and $(findstring command line,$(origin $(v))),$(findstring .,$(v))),$(v)=$($(v)))))
NPROC = $(if $(filter 0,$(GPUS)),1,$(GPUS))
train: setup
	$(PY) -m torch.distributed.run --nnodes $(NODES) --node-rank $(NODE_RANK) --nproc-per-node $(NPROC) \
	  --master-addr $(MASTER_ADDR) --master-port $(MASTER_PORT) --max-restarts $(RESTARTS) \
	  -m tools.train --shards "$(SHARDS)" --config "$(CONFIG)" \
	  $(if $(filter command line,$(origin OUT)),--out "$(OUT)") $(if $(STEPS),train.max_steps=$(STEPS)) \
	  $(if $(filter 0,$(GPUS)),train.device=cpu) $(TRAIN_OVERRIDES)

# does training learn? random-init vs trained teacher on generated data that colour and position
# cannot solve (the digit world), 2 seeds; writes OUT/learn_check.json and .png (default out/learn_check)
SEEDS ?= 0,1
CEILING ?=
learn-check: setup
	$(PY) -m tools.learn_check $(if $(filter command line,$(origin OUT)),--out "$(OUT)") --seeds $(SEEDS) \
	  $(if $(CEILING),--ceiling-steps $(CEILING)) \
	  $(if $(filter command line,$(origin CONFIG)),--config "$(CONFIG)") $(TRAIN_OVERRIDES)

bench-train: setup
	$(PY) -m tools.bench_train --shards "$(SHARDS)" --config "$(CONFIG)" $(TRAIN_OVERRIDES)

# one command that exercises the GPU path (loader both read modes, bench-train, DDP on 2 GPUs,
# label propagation) and writes one JSON and a PNG; exit 2 at once when CUDA cannot start
GPU_CHECK_OUT ?= data/gpu_check
gpu-check: setup
	$(PY) -m tools.gpu_check --out "$(GPU_CHECK_OUT)"

# evaluation: label propagation (TASK=davis|jhmdb|vip, ROOT=benchmark) or action recognition
# (TASK=ucf101|hmdb51-retrieval|linear|finetune, SHARDS=output of make shards DATA=ucf101|hmdb51,
# or FEATURES=feats.npz to score given features; key.sub=value overrides pass through)
CKPT ?=
TASK ?= davis
RESULTS ?=
DEVICE ?=
EVAL_ARGS ?=
FEATURES ?=
BACKBONE ?=
eval: setup
ifneq ($(filter %-retrieval %-linear %-finetune,$(TASK)),)
	$(PY) -m tools.eval_action --task $(TASK) $(if $(FEATURES),--features "$(FEATURES)",--shards "$(SHARDS)") \
	  $(call opt,ckpt,$(CKPT)) $(call opt,backbone,$(BACKBONE)) $(call opt,device,$(DEVICE)) \
	  $(if $(filter command line,$(origin OUT)),--out "$(OUT)") $(TRAIN_OVERRIDES) $(EVAL_ARGS)
else
	$(PY) -m tools.eval_propagation --task $(TASK) --root "$(ROOT)" $(call opt,ckpt,$(CKPT)) \
	  $(if $(filter command line,$(origin OUT)),--out "$(OUT)") $(call opt,results,$(RESULTS)) \
	  $(call opt,device,$(DEVICE)) $(EVAL_ARGS)
endif

clean:
	rm -rf data/sample_shards data/sample_kinetics data/demo .pytest_cache
