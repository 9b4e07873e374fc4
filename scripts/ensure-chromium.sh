#!/usr/bin/env bash
# Makes sure a Chromium the console's browser test (e2e/console_test.go) can drive exists:
# `chromium` on PATH, or $CHROMIUM. As root with apt-get (CI on Debian) it installs
# Debian's chromium package; otherwise it prints how to, and exits 0: the test then
# skips with the same advice.
set -euo pipefail

if [[ -n "${CHROMIUM:-}" ]] && command -v "$CHROMIUM" >/dev/null 2>&1; then
	exit 0
fi
if command -v chromium >/dev/null 2>&1; then
	exit 0
fi
if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
	chromium --version
	exit 0
fi
echo "note: chromium not found, the console browser test will skip (Debian/Ubuntu: sudo apt-get install chromium; or set CHROMIUM=/path/to/chrome)" >&2
