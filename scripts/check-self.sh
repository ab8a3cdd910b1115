#!/usr/bin/env bash
# check-self.sh runs `evergrant check` on this project's own client and
# server, as CI does: `check client` against conformance/client and
# `check server` against `evergrant serve` (with a real token, obtained here
# with curl through the authorization code flow with PKCE, so the token
# probes run too). Every scenario must pass. Needs go, curl and openssl.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
work="$(mktemp -d)"
serve_pid=""
cleanup() {
	[[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/evergrant" ./cmd/evergrant
go build -o "$work/conformance-client" ./conformance/client

echo "== evergrant check client -- conformance/client"
"$work/evergrant" check client -- "$work/conformance-client" 2>/dev/null

echo
echo "== evergrant check server <evergrant serve>"
"$work/evergrant" serve --memory --listen 127.0.0.1:0 --auto-approve --log-level warn >"$work/serve.out" 2>"$work/serve.err" </dev/null &
serve_pid=$!
for _ in $(seq 100); do
	grep -q '^mcp: ' "$work/serve.out" 2>/dev/null && break
	sleep 0.1
done
base="$(sed -n 's/^issuer: //p' "$work/serve.out")"
mcp="$(sed -n 's/^mcp: //p' "$work/serve.out")"
[[ -n "$base" && -n "$mcp" ]] || { echo "serve did not start"; cat "$work/serve.err"; exit 1; }

# A token the way any OAuth client gets one: register, authorize (the
# server auto-approves), exchange the code with the PKCE verifier.
redirect="http://127.0.0.1/callback"
client_id="$(curl -fsS -X POST "$base/register" -H 'Content-Type: application/json' \
	-d "{\"redirect_uris\":[\"$redirect\"],\"token_endpoint_auth_method\":\"none\",\"client_name\":\"check-self\"}" |
	sed -E 's/.*"client_id":"([^"]+)".*/\1/')"
verifier="$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
challenge="$(printf '%s' "$verifier" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=\n')"
location="$(curl -sS -o /dev/null -w '%{redirect_url}' --get "$base/authorize" \
	--data-urlencode response_type=code --data-urlencode "client_id=$client_id" \
	--data-urlencode "redirect_uri=$redirect" --data-urlencode "code_challenge=$challenge" \
	--data-urlencode code_challenge_method=S256 --data-urlencode state=check-self \
	--data-urlencode "resource=$mcp")"
code="$(printf '%s' "$location" | sed -nE 's/.*[?&]code=([^&]+).*/\1/p')"
[[ -n "$code" ]] || { echo "no authorization code"; exit 1; }
EVERGRANT_CHECK_TOKEN="$(curl -fsS -X POST "$base/token" --data-urlencode grant_type=authorization_code \
	--data-urlencode "code=$code" --data-urlencode "redirect_uri=$redirect" \
	--data-urlencode "code_verifier=$verifier" --data-urlencode "client_id=$client_id" \
	--data-urlencode "resource=$mcp" | sed -E 's/.*"access_token":"([^"]+)".*/\1/')"
export EVERGRANT_CHECK_TOKEN

# save_note needs notes.write, which this token lacks.
"$work/evergrant" check server --scope-probe save_note "$mcp"
