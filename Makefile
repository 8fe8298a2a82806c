# pc2 — the two commands that work on a fresh machine are `make run` and
# `make test`. Everything else is for developers.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/elacity/pc2/core/buildinfo.Version=$(VERSION)
# Per-target fuzzing time: brief in `make test`, longer with `make fuzz`.
FUZZTIME_CI ?= 3s
FUZZTIME    ?= 1m
BENCHTIME   ?= 1s
STATICCHECK_VERSION ?= v0.6.1

.PHONY: build run test deps vet fuzz fuzz-ci bench lint clean

## build: the pc2 binary in bin/
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/pc2 ./cmd/pc2

## run: a local network on loopback (a supernode and two nodes); Ctrl-C stops it
run: build
	./bin/pc2 devnet

## test: what CI runs: deps, vet and format check, race tests, each fuzz target briefly
test: deps vet
	$(GO) test -race -timeout 20m ./...
	tools/fuzz.sh $(FUZZTIME_CI)

## deps: install the system packages tests need (root only, idempotent)
deps:
	tools/install-deps.sh

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

## fuzz: every fuzz target for FUZZTIME each (make fuzz FUZZTIME=10m)
fuzz:
	tools/fuzz.sh $(FUZZTIME)

fuzz-ci:
	tools/fuzz.sh $(FUZZTIME_CI)

## bench: every Go benchmark with allocation counts
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...

## lint: gofmt, go vet and staticcheck (fetched from the module proxy)
lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

clean:
	rm -rf bin
