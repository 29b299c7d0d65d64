# Makefile: build, test, demo and maintenance entry points for sbpc (see README.md).
SHELL := /bin/bash
SWIFT ?= swift
BIN := .build/debug/sbpc
RELEASE_BIN := .build/release/sbpc
DEMO_MODEL := models/vit_p4_d6_ts17.onnx
FILECHECK := $(shell command -v FileCheck 2>/dev/null || command -v FileCheck-14 2>/dev/null || echo /usr/lib/llvm-14/bin/FileCheck)
APT_PACKAGES := libopenblas-dev libprotobuf-c-dev libturbojpeg0-dev libpng-dev pkg-config llvm-14-tools libopenmpi-dev openmpi-bin

.PHONY: all build release deps test unit-test golden demo format lint proto clean check-torch check-allocs fuzz fuzz-build test-asan bench bench-mpi bench-bf16-gemm accuracy

all: build

# Installs the Debian packages sbpc builds and tests with, only when one is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	$(SWIFT) build

# The Swift runtime and Foundation linked in: a cold start (nothing in the page cache) then
# maps one file instead of a dozen libraries, and `sbpc compile` of ViT-Tiny takes
# 0.25-0.27 s cold instead of 0.33-0.43 s (BENCHMARKS.md).
release: deps
	$(SWIFT) build -c release --static-swift-stdlib

test: build
	$(SWIFT) test 2>&1 | tee .build/unit-test.log | grep -vE "^(Test Case .* (passed|started)|\[[0-9]+/[0-9]+\] )" ; test $${PIPESTATUS[0]} -eq 0
	FILECHECK=$(FILECHECK) SBPC=$(BIN) Tests/golden/run.sh

unit-test: build
	$(SWIFT) test

golden: build
	FILECHECK=$(FILECHECK) SBPC=$(BIN) Tests/golden/run.sh

demo: build
	@echo "== sbpc inspect $(DEMO_MODEL) --batch 8 (the blocks SBP can use)"
	@$(BIN) inspect $(DEMO_MODEL) --batch 8 | sed -n '/^Blocks/,$$p'
	@echo
	@echo "== sbpc inspect models/convnext_t1131_dynamo/model.onnx (a hierarchical model: blocks by stage)"
	@$(BIN) inspect models/convnext_t1131_dynamo/model.onnx --batch 8 | sed -n '/^Blocks/,$$p'
	@echo
	@echo "== sbpc compile $(DEMO_MODEL) --keep 0.5 --blocks last:4 --batch 2 -o .build/demo.plan"
	@$(BIN) compile $(DEMO_MODEL) --keep 0.5 --blocks last:4 --batch 2 -o .build/demo.plan
	@echo
	@echo "== sbpc memory .build/demo.plan --compare (saved activations and FLOPs, SBP against --keep 1)"
	@$(BIN) memory .build/demo.plan --compare
	@echo
	@echo "== sbpc train .build/demo.plan: 5 SBP steps on a fixed batch, a fresh mask each step"
	@echo "   (the debug build, so the step time says nothing of speed: see make release and sbpc bench)"
	@$(BIN) train .build/demo.plan --steps 5 --input models/vit_p4_d6.ref/input.npy --labels models/reference/vit_p4_d6/labels.npy

# Heap allocations per training step (the step itself allocates nothing; the loss line costs 2).
check-allocs: release
	SBPC=$(RELEASE_BIN) Tests/alloc/check.sh

# Full-size ViT-Tiny and ConvNeXt-Tiny, both exporters, against PyTorch (needs models/requirements.txt).
check-torch: release
	SBPC=$(RELEASE_BIN) models/check_torch.sh

# SBP's accuracy in miniature: the digits set, tiny ViT and ConvNeXt, PyTorch / sbpc / sbpc
# with SBP over 3 seeds, and the per-layer gradient cosine plot (accuracy-results/).
# Needs the PyTorch tools and scikit-learn (models/requirements.txt).
accuracy: release
	python3 models/accuracy.py --sbpc $(RELEASE_BIN)

# Speed: sbpc bench and models/bench_torch.py on the full-size models, one table per model
# (bench-results/). Needs the PyTorch tools (models/requirements.txt); about 10 minutes.
bench: release
	SBPC=$(RELEASE_BIN) models/bench.sh

# The bf16 GEMM choice: sbpc's kernels (Sources/CBF16) against oneDNN's bf16 matmul and
# OpenBLAS fp32 on one core (bench/bf16_gemm.c; installs libdnnl-dev, which sbpc itself does
# not use, when missing).
bench-bf16-gemm:
	@dpkg -s libdnnl-dev >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -qq libdnnl-dev >/dev/null; }
	@mkdir -p .build
	$(CC) -O3 -march=native bench/bf16_gemm.c Sources/CBF16/bf16_gemm.c -ISources/CBF16/include -o .build/bf16_gemm -ldnnl -lopenblas -lm
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE=$${OPENBLAS_CORETYPE:-SkylakeX} .build/bf16_gemm

# Data-parallel scaling on this machine: mpirun -np 2 (1 thread each) against one process,
# ViT-Tiny SBP at batch 16 per rank; the allreduce wait's share of the step (about 1 minute).
bench-mpi: release
	SBPC=$(RELEASE_BIN) models/bench_mpi.sh

# Sanitizers. AddressSanitizer on every unit test (leak reports off there: XCTest and
# Foundation's Process keep objects alive at exit, which is theirs), LeakSanitizer on real
# sbpc runs (import, compile, train, eval, a bad command line), then ThreadSanitizer.
LSAN := LSAN_OPTIONS=suppressions=$(CURDIR)/Tests/lsan.supp:print_suppressions=0
test-asan: deps
	ASAN_OPTIONS=detect_leaks=0 $(SWIFT) test --scratch-path .build-asan --sanitize=address 2>&1 | grep -E "Executed [0-9]+ tests|error:|ERROR|SUMMARY" | tail -n 3; test $${PIPESTATUS[0]} -eq 0
	@d=$$(mktemp -d); A=.build-asan/debug/sbpc; set -e; \
	$(LSAN) $$A inspect models/convnext_t1131_dynamo/model.onnx > /dev/null; \
	$(LSAN) $$A compile models/vit_p4_d6_ts17.onnx --batch 2 -o $$d/v.plan > /dev/null; \
	$(LSAN) $$A train $$d/v.plan --steps 2 --threads 2 --input models/vit_p4_d6.ref/input.npy --labels models/reference/vit_p4_d6/labels.npy > /dev/null; \
	$(LSAN) $$A eval $$d/v.plan --input models/vit_p4_d6.ref/input.npy --labels models/reference/vit_p4_d6/labels.npy > /dev/null; \
	$(LSAN) $$A inspect Tests/Fixtures/ext_symlink/model.onnx 2> /dev/null && exit 1 || [ $$? = 1 ]; \
	$(LSAN) $$A inspect models/vit_p4_d6_ts17.onnx --batch abc 2> /dev/null || [ $$? = 64 ]; \
	rm -rf $$d; echo "LeakSanitizer: sbpc inspect/compile/train/eval and two bad inputs ran clean"
	$(SWIFT) test --scratch-path .build-tsan --sanitize=thread 2>&1 | grep -E "Executed [0-9]+ tests|error:|WARNING: ThreadSanitizer" | tail -n 3; test $${PIPESTATUS[0]} -eq 0

# libFuzzer + AddressSanitizer build of the fuzz targets (see Fuzz/README.md).
FUZZ_SECONDS ?= 60
FUZZ_BIN := .build-fuzz/release/sbpc-fuzz
FUZZER_RT = $(firstword $(wildcard $(dir $(shell command -v swiftc))../lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a))
fuzz-build: deps
	$(SWIFT) build -c release --scratch-path .build-fuzz --product sbpc-fuzz \
	  -Xswiftc -DFUZZING -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,trace-cmp,inline-8bit-counters,pc-table \
	  -Xcc -fsanitize=fuzzer-no-link,address -Xlinker $(FUZZER_RT) -Xlinker -lstdc++

fuzz: fuzz-build
	@for t in onnx ir plan data; do \
	  mkdir -p .build-fuzz/corpus-$$t .build-fuzz/findings; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  SBPC_FUZZ_TARGET=$$t $(FUZZ_BIN) .build-fuzz/corpus-$$t Fuzz/corpus/$$t -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=65536 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
	    -artifact_prefix=.build-fuzz/findings/$$t- 2>&1 | grep -E "^#[0-9]+.*(DONE|pulse)|ERROR|stat::number_of_executed_units|SUMMARY|Test unit written"; \
	  [ $${PIPESTATUS[0]} -eq 0 ] || { echo "fuzz $$t: finding in .build-fuzz/findings/ (replay: .build/debug/sbpc-fuzz $$t FILE)"; exit 1; }; \
	done

format:
	$(SWIFT) format --in-place --recursive Sources Tests Package.swift

lint:
	$(SWIFT) format lint --recursive Sources Tests Package.swift

# Regenerates the committed protobuf-c code from the project's ONNX schema subset.
proto:
	@command -v protoc-c >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -qq protobuf-c-compiler; }
	cd Sources/CONNXProto/schema && protoc-c --c_out=. onnx.proto
	mv Sources/CONNXProto/schema/onnx.pb-c.c Sources/CONNXProto/onnx.pb-c.c
	mv Sources/CONNXProto/schema/onnx.pb-c.h Sources/CONNXProto/include/onnx.pb-c.h
	sed -i 's|#include "onnx.pb-c.h"|#include "include/onnx.pb-c.h"|' Sources/CONNXProto/onnx.pb-c.c

clean:
	rm -rf .build
