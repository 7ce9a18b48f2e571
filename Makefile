# dimo — every documented command is one command on a fresh machine: targets that need the
# environment depend on `setup`, which is a no-op once its stamp is newer than pyproject.toml.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# CUDA users: `make setup TORCH="torch==2.13.0 --index-url ..."` or another pin. Torch is installed
# in the same pip command as everything else so pip never swaps in a different torch build.
TORCH ?= torch==2.13.0
LITDATA ?= litdata==0.2.76
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dimo-setup-stamp
PYTEST_ARGS ?=

.PHONY: setup test lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" -e ".[dev,streaming]"
	# litdata (streaming shards) without its torchvision requirement: its other dependencies are the
	# [streaming] extra above; torchvision has no CPU build here and would break transformers' imports
	$(PY) -m pip install -q --no-deps "$(LITDATA)"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info

# Benchmarks: `make bench` (quick CPU profile) or `make bench PROFILE=gpu`; results in benchmarks/results/.
PROFILE ?= cpu
.PHONY: bench
bench: setup
	$(PY) benchmarks/run.py --profile $(PROFILE)

# Geometry preview: views.png + trajectory MP4 of the demo skeleton (or MOTION=file.npz) under runs/.
.PHONY: preview
PREVIEW_ARGS ?=
preview: setup
	$(PY) -m dimo.cli geometry preview --out runs/geometry_preview $(if $(MOTION),--motion $(MOTION)) $(PREVIEW_ARGS)

# 3DiMo (docs/3dimo.md). `make train-stage1`: stage 1 on the toy data, tiny preset, CPU (TensorBoard run
# and checkpoints under runs/3dimo/stage1). train-stage2/3 resume from the previous stage's last.ckpt
# (global step continues; the previous stage is trained first if its checkpoint is missing, and a
# checkpoint of an unfinished previous stage is refused); `make train` = all three.
# An existing run folder is never deleted: the target refuses to start, or with RESUME=1 continues
# that stage from its own last.ckpt (after a crash, a kill or SIGTERM; docs/3dimo.md "Resuming").
# Paper scale: CONFIG="experiments/3dimo.yaml experiments/3dimo_paper.yaml".
CONFIG ?= experiments/3dimo.yaml
ARGS ?=
RUN_DIR ?= runs/3dimo
RESUME ?=
THREEDIMO_FIT = $(PY) -m dimo.cli fit $(foreach c,$(CONFIG),--config $(c))
threedimo_stage = $(THREEDIMO_FIT) --config experiments/3dimo_stage$(1).yaml \
	--trainer.logger.init_args.save_dir=$(dir $(RUN_DIR)) --trainer.logger.init_args.name=$(notdir $(RUN_DIR)) \
	--trainer.logger.init_args.version=stage$(1) --checkpoint.dirpath=$(RUN_DIR)/stage$(1)/checkpoints
# $(1): stage number; $(2): the checkpoint it starts from (empty for stage 1). RESUME=1 and an own
# last.ckpt: continue this stage from it instead.
define run_threedimo_stage
	@if [ -e $(RUN_DIR)/stage$(1) ] && [ "$(RESUME)" != 1 ]; then \
		echo "error: $(RUN_DIR)/stage$(1) exists; continue it with 'make train-stage$(1) RESUME=1' or move it away to start over" >&2; \
		exit 2; fi
	@ckpt="$(2)"; own=$(RUN_DIR)/stage$(1)/checkpoints/last.ckpt; \
	if [ "$(RESUME)" = 1 ] && [ -f $$own ]; then ckpt=$$own; echo "resuming stage $(1) from $$own"; fi; \
	set -x; $(call threedimo_stage,$(1)) $${ckpt:+--ckpt_path=$$ckpt} $(ARGS)
endef
.PHONY: train train-stage1 train-stage2 train-stage3

train-stage1: setup data
	$(call run_threedimo_stage,1,)

train-stage2: setup data
	test -f $(RUN_DIR)/stage1/checkpoints/last.ckpt || $(MAKE) train-stage1
	$(call run_threedimo_stage,2,$(RUN_DIR)/stage1/checkpoints/last.ckpt)

train-stage3: setup data
	test -f $(RUN_DIR)/stage2/checkpoints/last.ckpt || $(MAKE) train-stage2
	$(call run_threedimo_stage,3,$(RUN_DIR)/stage2/checkpoints/last.ckpt)

train: train-stage1
	$(MAKE) train-stage2
	$(MAKE) train-stage3

# Toy SVD-xt folder (docs/hvg.md, DESIGN.md 3.5): `make toy-pretrained-svd` trains a tiny 4x VAE (32x32 crops, one-cycle over 6000
# steps, stopping at 28.5 dB on its held-out clips: 28.65 dB at step 5000; unseen clips of another seed 27.85 dB, docs/hvg.md), a random
# tiny CLIP and an I2V-pretrained tiny SVD UNet (1000 steps) on toy clips and writes them in the real SVD-xt layout to
# pretrained/toy-svd-xt (committed; deterministic from --seed; one thread, ~22 CPU-minutes).
TOY_SVD ?= pretrained/toy-svd-xt
.PHONY: toy-pretrained-svd
toy-pretrained-svd: setup
	$(PY) -m dimo.toy.svd --out $(TOY_SVD)

# HVG (docs/hvg.md). `make train-hvg`: tiny preset on the toy multi-view data, CPU, minutes (TensorBoard
# run and checkpoints under runs/hvg). Paper scale: HVG_CONFIG="experiments/hvg.yaml experiments/hvg_paper_phase1.yaml".
HVG_CONFIG ?= experiments/hvg.yaml
.PHONY: train-hvg
train-hvg: setup data
	$(PY) -m dimo.cli fit $(foreach c,$(HVG_CONFIG),--config $(c)) $(ARGS)

# Toy pretrained folders (DESIGN.md 3.5, docs/toy.md): trained on toy humans by the project's own code,
# in the real diffusers layouts, committed under pretrained/ and loaded by the toy configs through the
# same from_pretrained path as paper scale. `make toy-pretrained` rebuilds them from their seeds
# (toy-wan2.1 about 2.4 hours on one thread, toy-svd-xt ~22 CPU-minutes; an existing folder is kept unless TOY_ARGS=--force).
PRETRAINED ?= pretrained
TOY_ARGS ?=
.PHONY: toy-pretrained toy-pretrained-wan
toy-pretrained: toy-pretrained-wan toy-pretrained-svd
# The committed toy-wan2.1 = the build (defaults, one thread: ~2.2 h) + one 400-step decoder phase on
# 21-frame windows (toy_report.json "decoder_refinements"); an existing folder is kept (no refinement).
toy-pretrained-wan: setup
	@if [ -f $(PRETRAINED)/toy-wan2.1/model_index.json ] && [ -z "$(filter --force,$(TOY_ARGS))" ]; then \
		echo "$(PRETRAINED)/toy-wan2.1 exists (TOY_ARGS=--force rebuilds it)"; else \
		$(PY) -m dimo.cli toy wan --out $(PRETRAINED)/toy-wan2.1 --threads 1 $(TOY_ARGS) && \
		$(PY) -m dimo.cli toy wan --out $(PRETRAINED)/toy-wan2.1 --refine-decoder --decoder-steps 400 --decoder-window 21 --threads 1; fi

# Toy ablations (issue #13, docs/ablations.md): paired toy runs per arm (same seeds and data), results
# table + JSON + plots in benchmarks/results/ablations/. `make ablations ONLY=a` runs one (keys a, b, k,
# c: 3DiMo; d, e: HVG); two single-threaded runs side by side. Each ablation fits in 30 minutes on 2 cores.
ONLY ?=
ABLATION_ARGS ?=
.PHONY: ablations
ablations: setup data
	$(PY) benchmarks/ablations.py $(if $(ONLY),--only $(ONLY)) $(ABLATION_ARGS)

# Score generated videos against references (mp4 or frame folders, matched by name); weights are read
# from $(DIMO_WEIGHTS_DIR) (never downloaded). Example:
#   make eval GENERATED=runs/gen REFERENCE=data/ref METRICS="fid fvd lpips_alex ssim psnr"
.PHONY: eval
GENERATED ?=
REFERENCE ?=
METRICS ?= fid fvd fid_vid lpips_alex ssim psnr l1
EVAL_ARGS ?=
eval: setup
	@test -n "$(GENERATED)" -a -n "$(REFERENCE)" || { echo "usage: make eval GENERATED=DIR REFERENCE=DIR [METRICS=...] [EVAL_ARGS=...]"; exit 2; }
	$(PY) -m dimo.cli evaluate --generated "$(GENERATED)" --reference "$(REFERENCE)" --metrics $(METRICS) $(EVAL_ARGS)

# Toy-human dataset (docs/data.md): `make data` builds data/toy once (skipped when its manifest exists;
# `make data DATA_ARGS=--force` rebuilds) and validates it. Bigger sets: DATA_ARGS="--clips-per-source 50 --frames 48".
DATA_ROOT ?= data/toy
DATA_ARGS ?=
.PHONY: data
data: setup
	@if [ -f $(DATA_ROOT)/manifest.jsonl ] && [ -z "$(DATA_ARGS)" ]; then echo "$(DATA_ROOT) is built"; else \
		$(PY) -m dimo.cli data synth --out $(DATA_ROOT) $(DATA_ARGS) && $(PY) -m dimo.cli data validate $(DATA_ROOT); fi

# Generation (docs/generate.md). `make generate`: animate the first frame of a toy clip with that clip's
# motion using the `make train-stage1` checkpoint (trained first when missing); MP4 + JSON sidecar under
# runs/generate/. Other inputs: GEN_REFERENCE=img.png GEN_DRIVING=video.mp4 GEN_PROMPT="..." GEN_ARGS="--steps 16".
GEN_CKPT ?= $(RUN_DIR)/stage1/checkpoints/last.ckpt
GEN_DRIVING ?= $(DATA_ROOT)/clips/internet_0000/view_00.mp4
GEN_REFERENCE ?= $(GEN_DRIVING)
GEN_PROMPT ?= Front view. The camera stays static.
GEN_OUT ?= runs/generate/3dimo.mp4
GEN_ARGS ?=
.PHONY: generate
generate: setup data
	test -f $(GEN_CKPT) || $(MAKE) train-stage1
	$(PY) -m dimo.cli generate --model 3dimo --checkpoint $(GEN_CKPT) --reference $(GEN_REFERENCE) \
		--driving $(GEN_DRIVING) --prompt "$(GEN_PROMPT)" --out $(GEN_OUT) \
		$(if $(wildcard $(TOY_DETECTOR)/model.safetensors),--detector $(TOY_DETECTOR)) $(GEN_ARGS)

# Toy 2D keypoint detector (docs/data.md "2D keypoints"): a small heatmap network trained on toy renders with exact
# projected joints, deterministic from --seed, written to pretrained/toy-detector (committed; report.json holds
# held-out PCK@0.05 and pixel error). `make keypoints` runs it over data/toy and records keypoints2d files.
TOY_DETECTOR ?= pretrained/toy-detector
.PHONY: toy-detector keypoints
toy-detector: setup
	$(PY) -m dimo.pose.train_toy --out $(TOY_DETECTOR) $(TOY_ARGS)
keypoints: setup data
	$(PY) -m dimo.cli data keypoints $(DATA_ROOT) --detector $(TOY_DETECTOR)

# 3D lifting on held-out toy clips (docs/pose.md): the fixed-depth and SMPLify-like baselines and Free3D
# (pretrained/toy-free3d, `make train-free3d`) on projected and detected 2D keypoints ->
# benchmarks/results/lifting-toy.{json,md} (MPJPE, PA-MPJPE, T_root in mm). One method, keeping the others'
# rows: LIFT_ARGS="--clips-per-source 2 --methods free3d --keep".
LIFT_ARGS ?= --clips-per-source 2
.PHONY: eval-lifting
eval-lifting: setup
	$(PY) -m dimo.pose.eval_lifting --detector $(TOY_DETECTOR) $(LIFT_ARGS)

# MVLift (docs/pose.md "MVLift"): its four stages on 2D-only toy data, CPU, one thread (experiments/mvlift_stage*.yaml)
# -> $(MVLIFT_OUT) (line_diffusion/, multiview_diffusion/, report.json with each stage's time); logs and the stage-2/3
# data under runs/mvlift. The mvlift rows of the lifting table: `make eval-lifting LIFT_ARGS="--methods mvlift
# mvlift_stage1 mvlift_stage2 mvlift_stage2_noepi mvlift_sds3d mvlift_sds3d_flat --raw mvlift_stage1 mvlift_stage2
# mvlift_sds3d --merge"` (--raw: also before the skeleton fit; docs/pose.md "MVLift").
MVLIFT_OUT ?= pretrained/toy-mvlift
MVLIFT_ARGS ?=
.PHONY: train-mvlift
train-mvlift: setup
	OMP_NUM_THREADS=1 $(PY) -m dimo.pose.mvlift.train --out $(MVLIFT_OUT) --run runs/mvlift $(MVLIFT_ARGS)

# Free3D (docs/pose.md, arXiv 2511.11368): the motion-lifting RQ-VAE trained on single-view 2D sequences of toy
# internet clips only (no 3D label in any training batch), CPU; then exported to $(TOY_FREE3D) (config.json +
# model.safetensors, committed) for `make eval-lifting` and `evaluate --metrics mpjpe ...`. An existing run
# folder is never deleted: move it away to start over.
FREE3D_RUN ?= runs/free3d/toy
TOY_FREE3D ?= pretrained/toy-free3d
.PHONY: train-free3d
train-free3d: setup
	@if [ -e $(FREE3D_RUN) ]; then echo "error: $(FREE3D_RUN) exists; move it away to start over" >&2; exit 2; fi
	$(PY) -m dimo.cli fit --config experiments/free3d.yaml --trainer.logger.init_args.save_dir=$(dir $(patsubst %/,%,$(dir $(FREE3D_RUN)))) \
		--trainer.logger.init_args.name=$(notdir $(patsubst %/,%,$(dir $(FREE3D_RUN)))) --trainer.logger.init_args.version=$(notdir $(FREE3D_RUN)) \
		--checkpoint.dirpath=$(FREE3D_RUN)/checkpoints $(ARGS)
	$(PY) -m dimo.pose.free3d_module export $(FREE3D_RUN)/checkpoints/last.ckpt $(TOY_FREE3D)
