#!/usr/bin/env bash
# Runs the bridge's load benchmark (cmd/bridge-bench) against its own
# redis-server and a freshly built bridge. Arguments go to bridge-bench,
# e.g. scripts/bench.sh -duration 5s -json
set -euo pipefail

cd "$(dirname "$0")/.."

./scripts/ensure-redis.sh >/dev/null
exec go run ./cmd/bridge-bench "$@"
