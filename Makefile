# llama-operator — the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
LLAMA_OP_CACHE ?= $(HOME)/.cache/llama-operator
export LLAMA_OP_CACHE
# Build outputs live outside the clone so fresh clones (CI) start warm.
export CARGO_TARGET_DIR ?= $(LLAMA_OP_CACHE)/target
export CARGO_TERM_COLOR ?= never
# Tests are single-threaded in compute: deterministic and quiet on a shared 2-core machine.
export RAYON_NUM_THREADS ?= 1

CARGO ?= cargo

.PHONY: help test prune-cache lint cuda-check unit gen-check fuzz e2e llamacpp-models cluster-build cluster-up cluster-down demo demo-server images model-image model pyenv

help:
	@echo "make demo          the whole platform on the local cluster: operator (Helm) + a served SmolLM2 LlamaDeployment"
	@echo "make demo-server   just llama-server on 127.0.0.1:8000 with the default model (no cluster)"
	@echo "make images        OCI image archives of llama-server and llama-operator (loaded into the local node if up)"
	@echo "make model-image MODEL=file.gguf  a modelcar image for spec.model.image"
	@echo "make test          everything CI runs: fmt, clippy, the CUDA compile-check, unit+integration tests, generated-file checks, a short fuzz run, e2e"
	@echo "make fuzz          coverage-guided fuzzing of the parsers (FUZZ_SECONDS per target; scripts/fuzz.sh)"
	@echo "make cuda-check    clippy of llama-server --features cuda,nccl with nvcc from PyPI wheels (no GPU needed)"
	@echo "make cluster-up    start the local control plane (etcd, apiserver, controller-manager, scheduler, kwok)"
	@echo "make cluster-down  stop it and remove its state"
	@echo "make e2e           run the e2e suite (starts and stops the local control plane unless one is up)"

## The one test command.
test: prune-cache lint cuda-check unit gen-check fuzz e2e

# Stale build outputs removed from the shared cache when its disk runs low (scripts/prune-cache.sh).
prune-cache:
	@bash scripts/prune-cache.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The `cuda` feature compile-checked (no GPU, no driver, no link): nvcc from NVIDIA's PyPI wheels, cached. Then our
# run-time kernels compiled as the server compiles them on a GPU (NVRTC) and assembled for sm_90 (ptxas).
cuda-check:
	CUDA_HOME=$$(bash scripts/cuda-toolkit.sh) && export CUDA_HOME CUDA_PATH=$$CUDA_HOME \
	  PATH="$$CUDA_HOME/bin:$$PATH" CUDA_COMPUTE_CAP=90 && \
	  $(CARGO) clippy -p llama-server --features cuda,nccl --all-targets --locked -- -D warnings && \
	  python3 scripts/nvrtc-check.py "$$(bash scripts/cuda-toolkit.sh nvrtc)" "$$CUDA_HOME/bin/ptxas" sm_90 \
	    server/src/kv_cache/paged_attention.cu $(foreach t,f32 f16 bf16,reshape_and_cache_$(t) paged_attention_$(t))

unit: pyenv model llamacpp-models
	LLAMA_OP_VENV=$$(bash scripts/pyenv.sh) LLAMA_OP_MODEL=$$(bash scripts/fetch-model.sh) \
	  $(CARGO) test --workspace --locked

gen-check:
	bash scripts/gen-check.sh

# Coverage-guided fuzzing (libFuzzer on stable Rust) of the GGUF reader, the request validator and the
# detokenizer/stop-string path: FUZZ_SECONDS each (20 in the test run), from the committed seeds plus what
# earlier runs found (cached). A finding fails the run and names the reproducer.
FUZZ_SECONDS ?= 20
fuzz: model
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

e2e:
	bash e2e/run.sh

cluster-build:
	bash e2e/cluster/build.sh

cluster-up:
	@bash e2e/cluster/up.sh

cluster-down:
	@bash e2e/cluster/down.sh

model:
	@bash scripts/fetch-model.sh >/dev/null

# SmolLM2 in every llama.cpp quantization preset, by llama.cpp's own quantizer (built once from the
# llama-cpp-python sdist, ~6 min on 2 cores, cached): the engine_golden tests run them.
llamacpp-models: pyenv model
	@bash scripts/reference/build-llamacpp-quantize.sh >/dev/null && \
	  "$$(bash scripts/pyenv.sh)/bin/python" scripts/reference/make_models.py --only llamacpp >/dev/null

pyenv:
	@bash scripts/pyenv.sh >/dev/null

demo:
	bash scripts/demo-platform.sh

demo-server:
	bash scripts/demo.sh

images:
	@archives=$$(bash scripts/build-images.sh) && echo "$$archives" && \
	  { bash e2e/cluster/load-image.sh $$archives 2>/dev/null && echo "loaded into the local cluster's real node" || \
	    echo "(the local cluster's real node is not running: images not loaded; make cluster-up, then make images)"; }

model-image:
	@test -n "$(MODEL)" || { echo "usage: make model-image MODEL=path/to/file.gguf [IMAGE=ref]" >&2; exit 2; }
	@out=$$(bash scripts/build-model-image.sh "$(MODEL)" $(IMAGE)) && echo "$$out" && \
	  { bash e2e/cluster/load-image.sh $$(echo "$$out" | sed -n 's/^archive: //p') 2>/dev/null && \
	    echo "loaded into the local cluster's real node" || echo "(the local cluster's real node is not running: not loaded)"; }
