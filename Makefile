# saferlhf: Safe RLHF in Go. The default build (-tags noxla) compiles the native C engine
# (native/engine, cgo) when a C compiler is present, else it is pure Go (CGO_ENABLED=0);
# `make build-nocgo` forces the pure-Go binary. `make build-gpu` adds the XLA backend.
GO        ?= go
GOFLAGS_CPU = CGO_ENABLED=0
CGO_BUILD := $(shell command -v $(CC) >/dev/null 2>&1 && echo 1 || echo 0)
TAGS_CPU  = -tags noxla
BIN       = bin/saferlhf
DEMO_OUT ?= out/demo
COMPARE_OUT ?= out/compare
FUZZTIME ?= 5s

.PHONY: all build build-nocgo build-gpu test test-short test-native asan vet fuzz verify-reference demo compare bench clean

all: build

build:
	CGO_ENABLED=$(CGO_BUILD) $(GO) build $(TAGS_CPU) -o $(BIN) ./cmd/saferlhf

# The pure-Go binary (no C toolchain; --backend native reports it is not compiled in).
build-nocgo:
	$(GOFLAGS_CPU) $(GO) build $(TAGS_CPU) -o $(BIN) ./cmd/saferlhf

# XLA/PJRT backend (needs cgo); run with --backend xla:cuda on an NVIDIA machine.
build-gpu:
	CGO_ENABLED=1 $(GO) build -o bin/saferlhf-gpu ./cmd/saferlhf

vet:
	$(GOFLAGS_CPU) $(GO) vet $(TAGS_CPU) ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

test: vet build
	$(GOFLAGS_CPU) $(GO) test $(TAGS_CPU) -timeout 20m ./...
	@if [ "$(CGO_BUILD)" = 1 ]; then $(MAKE) test-native; else echo "no C compiler: native engine tests skipped"; fi
	$(BIN) verify-reference --golden assets/golden
	$(MAKE) fuzz

# The native C engine (needs cgo and a C compiler; its tests skip in the pure-Go build above).
test-native:
	CGO_ENABLED=1 $(GO) test $(TAGS_CPU) -count=1 ./native/... ./internal/backend/ ./train/collectives/
	CGO_ENABLED=1 $(GO) test $(TAGS_CPU) -count=1 -run 'Native|Resume' ./train/ppo/
	CGO_ENABLED=1 $(GO) test $(TAGS_CPU) -count=1 -run 'Native' ./train/stages/ ./cmd/saferlhf/ ./train/eval/
	CGO_ENABLED=1 $(GO) test $(TAGS_CPU) -count=1 -run 'Backends' ./train/model/

# The native engine's tests under AddressSanitizer (out-of-bounds checks of the C kernels).
asan:
	CGO_ENABLED=1 $(GO) test $(TAGS_CPU) -asan -count=1 ./native/engine/ ./native/llama/
	CGO_ENABLED=1 $(GO) test $(TAGS_CPU) -asan -run '^$$' -fuzz FuzzSgemmShapes -fuzztime $(FUZZTIME) ./native/engine/
	CGO_ENABLED=1 $(GO) test $(TAGS_CPU) -asan -run '^$$' -fuzz FuzzRowOpShapes -fuzztime $(FUZZTIME) ./native/engine/

# Short, bounded fuzz runs of every parser (each target FUZZTIME).
fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME)

verify-reference: build
	$(BIN) verify-reference --golden assets/golden

demo: build
	bash scripts/demo.sh $(BIN) $(DEMO_OUT)

# The paper's comparison (PPO, reward shaping, PPO-Lag with SGD and PID λ) on the demo's models (budget <= 40 min on 2 cores).
compare: build
	bash scripts/compare.sh $(BIN) $(COMPARE_OUT)

bench: build
	$(GOFLAGS_CPU) $(GO) test $(TAGS_CPU) -run '^$$' -bench . -benchtime 1x ./...
	CGO_ENABLED=$(CGO_BUILD) $(GO) test $(TAGS_CPU) -run '^$$' -bench . -benchtime 1x ./native/...

clean:
	rm -rf bin out
