.PHONY: build run test fuzz bench lint

build:
	go build -o bin/bridge ./cmd/bridge

run:
	go run ./cmd/bridge

test:
	./scripts/ensure-redis.sh && ./scripts/ensure-chromium.sh && go test -race -count=1 -timeout 9m ./...

fuzz:
	./scripts/fuzz.sh

bench:
	go run ./cmd/bridge-bench

# staticcheck is pinned, and run through `go run` so CI needs nothing installed.
STATICCHECK = honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt needed:"; echo "$$unformatted"; exit 1; \
	fi
	go vet ./...
	go run $(STATICCHECK) ./...
