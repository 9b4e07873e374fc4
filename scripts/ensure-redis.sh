#!/usr/bin/env bash
# Makes sure the Redis binaries the tests use exist (internal/redistest starts
# its own servers on free ports; system services on 6379/26379 are unused):
# redis-server (or $REDIS_SERVER), redis-cli for clusters, and redis-sentinel.
# Sentinels are run as `redis-server <conf> --sentinel`, so a missing
# redis-sentinel package is installed when possible but is not an error.
set -euo pipefail

can_apt() { [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; }

apt_updated=""
apt_install() {
	if [[ -z "$apt_updated" ]]; then
		apt-get update -qq
		apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

server="redis-server"
if [[ -n "${REDIS_SERVER:-}" ]] && command -v "$REDIS_SERVER" >/dev/null 2>&1; then
	server="$REDIS_SERVER"
elif ! command -v redis-server >/dev/null 2>&1; then
	if can_apt; then
		apt_install redis-server
	else
		echo "redis-server is required: install it (Debian/Ubuntu: sudo apt-get install redis-server redis-sentinel; macOS: brew install redis)" >&2
		exit 1
	fi
fi
"$server" --version

if ! command -v redis-sentinel >/dev/null 2>&1; then
	if can_apt; then
		apt_install redis-sentinel
		redis-sentinel --version
	else
		echo "note: redis-sentinel not installed (Debian/Ubuntu: sudo apt-get install redis-sentinel); tests run sentinels as redis-server --sentinel" >&2
	fi
fi

# Cluster tests run redis-cli from redis-server's directory, else from PATH.
if ! [[ -x "$(dirname "$(command -v "$server")")/redis-cli" ]] && ! command -v redis-cli >/dev/null 2>&1; then
	if can_apt; then
		apt_install redis-tools
	else
		echo "note: redis-cli not found (Debian/Ubuntu: sudo apt-get install redis-tools); cluster tests of 3+ masters need it" >&2
	fi
fi
