#!/usr/bin/env bash
# Makes sure a redis-server binary exists for the tests (internal/redistest
# starts its own servers on free ports; a system service on 6379 is unused).
set -euo pipefail

if [[ -n "${REDIS_SERVER:-}" ]] && command -v "$REDIS_SERVER" >/dev/null 2>&1; then
	"$REDIS_SERVER" --version
	exit 0
fi

if command -v redis-server >/dev/null 2>&1; then
	redis-server --version
	exit 0
fi

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
	redis-server --version
	exit 0
fi

echo "redis-server is required: install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)" >&2
exit 1
