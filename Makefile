# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create/update .venv, install torch 2.13.0 and the tools, and build the extension.
# On a machine that already has a working torch (say a GPU box with its CUDA torch and no network),
# pass PYTHON to use that interpreter and its torch instead of creating .venv:
#     make test PYTHON=python3
PYTHON ?=
VENV ?= .venv
BOOTSTRAP_PYTHON ?= python3
export MAX_JOBS ?= 2

ifeq ($(strip $(PYTHON)),)
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-stamp
else
PY := $(PYTHON)
DEPS :=
endif

.PHONY: demo test build check-cuda bench bench-kernels gpu-check gpu-test gpu-bench gpu-test-slow sweep-pstar clean

$(VENV)/.deps-stamp: pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q "torch==2.13.0" setuptools wheel ninja numpy scipy tqdm pytest pytest-benchmark matplotlib pyarrow "ray>=2.9"
	touch $@

# pip's editable install builds rhmfast._C in place; ninja, compiling in build/ (setup.py), recompiles only
# the sources that changed, so a build with nothing changed takes seconds.
build: $(DEPS)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import rhmfast; print(rhmfast.backends())"

# RHMFAST_BACKEND=extension: an extension that fails to load is an error here, never a silent fall
# back to the reference (tests that exercise the reference select it themselves).
# The second line runs the kernel benchmarks once each, untimed, so that they (and their correctness
# checks) cannot rot; the first one never collects them (testpaths = tests).
test: build check-cuda
	RHMFAST_BACKEND=extension $(PY) -m pytest -q -ra
	RHMFAST_BACKEND=extension $(PY) -m pytest $(KERNEL_BENCHMARKS) --benchmark-disable -q -p no:cacheprovider

# Compile-check every CUDA kernel with plain nvcc (no torch) for sm_80 and sm_90; fails on errors
# and on register spills. Also parses every C++ source as C++17, as torch before 2.12 builds them.
# Skipped, saying so, where nvcc is absent.
check-cuda:
	PYTHON=$(PY) bash .ci/check_cuda.sh

demo: build
	$(PY) -m rhmfast demo

bench: build
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_patchconv.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_hierarchy.py
	$(PY) benchmarks/bench_replicas.py

# The kernels under pytest-benchmark, one table per op, shape, mode and device with the providers side by
# side (benchmarks/README.md). Each run is saved, numbered, as
# benchmarks/results/kernels/<platform>-<python>/NNNN_<machine>.json (<machine> as the bench_*.py scripts
# name theirs: cpu-avx2, cpu-avx512, with _cuda where the CUDA cases ran), and the latest one summarised in
# benchmarks/results/kernels_<machine>.md. Compare two saved runs, by number:
#     $(PY) -m pytest_benchmark --storage benchmarks/results/kernels compare 0001 0002 --group-by=group --sort=name --columns=min,median,rounds
# or a new run with the latest saved one: add --benchmark-compare to the pytest line.
KERNEL_BENCHMARKS := benchmarks/test_kernels_generate.py benchmarks/test_kernels_layers.py
KERNEL_RESULTS := benchmarks/results/kernels
bench-kernels: build
	tag=$$($(PY) benchmarks/kernels_report.py --tag) && \
	RHMFAST_BACKEND=extension $(PY) -m pytest $(KERNEL_BENCHMARKS) -q -p no:cacheprovider \
		--benchmark-group-by=group --benchmark-columns=min,median,mean,stddev,rounds --benchmark-sort=name \
		--benchmark-storage=$(KERNEL_RESULTS) --benchmark-save=$$tag && \
	$(PY) benchmarks/kernels_report.py "$$(ls -t $(KERNEL_RESULTS)/*/*_$$tag.json | head -n 1)" \
		--out benchmarks/results/kernels_$$tag.md

# Every GPU check, for a machine with a CUDA torch and no network:
#     make -k gpu-check PYTHON=python3 MAX_JOBS=16 RESULTS=some/dir
# gpu-test builds the CUDA kernels, fails at once without a GPU or kernels, and runs the quick CUDA
# tests; gpu-bench then runs the GPU rows of the benchmarks (fastest first, each writing its JSON +
# markdown to RESULTS as it finishes); gpu-test-slow last runs the slow CUDA tests (torchrun with NCCL,
# which can take minutes to start), so that a stall there cannot cost the benchmarks. Test results also
# go to RESULTS as JUnit XML. Where one command has a time limit, run the targets separately.
RESULTS ?= benchmarks/results
gpu-check: gpu-test gpu-bench gpu-test-slow

gpu-test: build
	$(PY) -c "import sys, torch, rhmfast; b = rhmfast.backends(); print(b); sys.exit(0 if torch.cuda.is_available() and b['cuda_kernels'] else 'gpu-check: no CUDA device, or the CUDA kernels are not built')"
	mkdir -p $(RESULTS)
	RHMFAST_BACKEND=extension $(PY) -m pytest -q -ra -m "cuda and not slow" --junitxml=$(RESULTS)/gpu_tests.xml

gpu-bench: build
	$(PY) benchmarks/bench_generate.py --devices cuda --out $(RESULTS)
	$(PY) benchmarks/bench_train.py --device cuda --out $(RESULTS)
	$(PY) benchmarks/bench_patchconv.py --device cuda --out $(RESULTS)/patchconv_cuda.json
	$(PY) benchmarks/bench_replicas.py --device cuda --steps 100 --repeats 1 --out $(RESULTS)
	$(PY) benchmarks/bench_posterior.py --device cuda --out $(RESULTS)
	$(PY) benchmarks/bench_hlcn.py --device cuda --quick --out $(RESULTS)
	$(PY) benchmarks/bench_transformers.py --device cuda --quick --out $(RESULTS)

gpu-test-slow: build
	mkdir -p $(RESULTS)
	RHMFAST_BACKEND=extension $(PY) -m pytest -q -ra -m "cuda and slow" --junitxml=$(RESULTS)/gpu_tests_slow.xml

# The sample-complexity sweep of benchmarks/results/sweep_pstar (resumable: re-run to continue).
sweep-pstar: build
	$(PY) -m rhmfast sweep --config benchmarks/sweeps/pstar.toml --out out/sweep_pstar
	$(PY) -m rhmfast collect out/sweep_pstar --out benchmarks/results/sweep_pstar/results.parquet
	$(PY) -m rhmfast plot out/sweep_pstar --out benchmarks/results/sweep_pstar

clean:
	rm -rf build rhmfast/_C*.so *.egg-info
