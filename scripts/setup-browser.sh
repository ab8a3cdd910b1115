#!/usr/bin/env bash
# setup-browser.sh installs what the browser test (cmd/evergrant/browser_test.go)
# needs: Debian's Chromium and ChromeDriver, at /usr/bin/chromium and
# /usr/bin/chromedriver. Safe to run again: it does nothing when both are there.
#
# Go tests find them through internal/webdriver (EVERGRANT_CHROMIUM and
# EVERGRANT_CHROMEDRIVER override the paths).
# Needs: Debian's apt-get and root (or sudo). Reads no standard input.
set -euo pipefail

log() { printf 'setup-browser: %s\n' "$*" >&2; }

chromium="${EVERGRANT_CHROMIUM:-/usr/bin/chromium}"
chromedriver="${EVERGRANT_CHROMEDRIVER:-/usr/bin/chromedriver}"

if [[ -x "$chromium" && -x "$chromedriver" ]]; then
	log "already installed: $("$chromium" --version 2>/dev/null || echo "$chromium"); $("$chromedriver" --version 2>/dev/null || echo "$chromedriver")"
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	log "apt-get not found; install Chromium and ChromeDriver yourself (Debian packages: chromium chromium-driver)"
	exit 1
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo=(sudo -n)
	else
		log "not root and no sudo; run as root: apt-get install chromium chromium-driver"
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
"${sudo[@]}" apt-get update -qq </dev/null
log "apt-get install chromium chromium-driver"
"${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver </dev/null >&2

for bin in "$chromium" "$chromedriver"; do
	if [[ ! -x "$bin" ]]; then
		log "installing did not produce $bin"
		exit 1
	fi
done
log "installed: $("$chromium" --version 2>/dev/null); $("$chromedriver" --version 2>/dev/null)"
