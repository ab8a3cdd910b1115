#!/usr/bin/env bash
# conformance/run.sh runs the official MCP conformance suite
# (npm @modelcontextprotocol/conformance) against evergrant's OAuth client
# (conformance/client: client.Transport + the official Go SDK), and compares
# the result with conformance/expected-failures-<version>.txt.
#
# For each suite version it:
#   1. installs the suite into .cache/conformance-<version> (once; idempotent);
#   2. runs the client suites (default: auth, core, all) and reads the
#      suite's own per-scenario verdicts (a scenario fails when one of its
#      checks fails or warns);
#   3. runs every scenario once more on its own (--scenario), because only
#      then does the suite count the client's exit status (suite mode ignores
#      it; single runs fail a scenario whose client exits non-zero unless the
#      scenario expects the client to give up); reported as the suite
#      "exit-status".
# It fails when a scenario fails that the expected-failures file does not
# list, when a listed scenario passes (remove it: the file only shrinks), or
# when a listed scenario does not exist in that version ("conformance list").
#
# Needs: bash, go, npm on PATH and the npm registry (Node 22 comes from
# scripts/setup-node.sh). Reads no standard input.
#
# Environment (all optional):
#   CONFORMANCE_VERSIONS   suite versions       (default "0.1.16 0.2.0-alpha.12")
#   CONFORMANCE_SUITES     client suites        (default "auth core all")
#   CONFORMANCE_SINGLE     scenarios run alone: "all" (every scenario of the
#                          "all" suite), "auth" (auth/* only) or "none"
#                          (default "all")
#   CONFORMANCE_JOBS       parallel single runs (default 4)
#   CONFORMANCE_TIMEOUT_MS per-scenario timeout (default 30000)
#   CONFORMANCE_OUT        keep the suites' result files here (default: a
#                          temporary directory, removed at exit)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

read -r -a versions <<<"${CONFORMANCE_VERSIONS:-0.1.16 0.2.0-alpha.12}"
read -r -a suites <<<"${CONFORMANCE_SUITES:-auth core all}"
single="${CONFORMANCE_SINGLE:-all}"
jobs="${CONFORMANCE_JOBS:-4}"
timeout_ms="${CONFORMANCE_TIMEOUT_MS:-30000}"

log() { printf 'conformance: %s\n' "$*" >&2; }
started=$SECONDS

# --- Node 22 -------------------------------------------------------------------
node="$(bash scripts/setup-node.sh </dev/null)"
export PATH="$(dirname "$node"):$PATH"
log "node $("$node" --version)"

# --- work directory and client binary --------------------------------------------
work="$(mktemp -d)"
if [[ -n "${CONFORMANCE_OUT:-}" ]]; then
	mkdir -p "$CONFORMANCE_OUT"
	out="$(cd "$CONFORMANCE_OUT" && pwd)"
else
	out="$work/results"
fi
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
if [[ "$work" == *" "* || "$out" == *" "* ]]; then
	# The suite splits --command on spaces.
	log "the temporary directory $work (or $out) contains a space; set TMPDIR"
	exit 1
fi
client="$work/evergrant-conformance-client"
log "building conformance/client"
go build -o "$client" ./conformance/client

# details.mjs prints, for one scenario's result directory, the checks that
# failed or warned, one per line.
cat >"$work/details.mjs" <<'EOF'
import { readFileSync } from 'node:fs';
const checks = JSON.parse(readFileSync(process.argv[2], 'utf8'));
for (const c of checks) {
  if (c.status !== 'FAILURE' && c.status !== 'WARNING') continue;
  const msg = (c.errorMessage || c.description || '').replace(/\s+/g, ' ').slice(0, 300);
  console.log(`      ${c.status} ${c.id}: ${msg}`);
}
EOF

# --- helpers ----------------------------------------------------------------------
install_suite() { # version -> prints the CLI path
	local v="$1" dir="$repo/.cache/conformance-$1"
	local pkg="$dir/node_modules/@modelcontextprotocol/conformance"
	local have=""
	[[ -f "$pkg/package.json" ]] && have="$("$node" -p "require('$pkg/package.json').version" 2>/dev/null || true)"
	if [[ "$have" != "$v" ]]; then
		log "installing @modelcontextprotocol/conformance@$v into $dir"
		mkdir -p "$dir"
		npm --yes --no-fund --no-audit --no-update-notifier install --prefix "$dir" \
			--no-save --no-package-lock "@modelcontextprotocol/conformance@$v" </dev/null >&2
	fi
	echo "$pkg/dist/index.js"
}

# read_expected file -> fills the associative array "expected"
read_expected() {
	local f="$1" line
	expected=()
	[[ -f "$f" ]] || return 0
	while IFS= read -r line || [[ -n "$line" ]]; do
		line="${line%%#*}"
		line="${line#"${line%%[![:space:]]*}"}"
		line="${line%"${line##*[![:space:]]}"}"
		[[ -n "$line" ]] && expected["$line"]=1
	done <"$f"
}

# result_dir base scenario -> the suite's result directory for the scenario
result_dir() {
	local d
	for d in "$1/$2"-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*; do
		[[ -d "$d" ]] && { echo "$d"; return; }
	done
}

# explain base scenario: the failed checks and the tail of the client's stderr
explain() {
	local d
	d="$(result_dir "$1" "$2")"
	if [[ -z "$d" ]]; then
		echo "      (no result directory; see the suite log $1.log)"
		return
	fi
	[[ -f "$d/checks.json" ]] && "$node" "$work/details.mjs" "$d/checks.json" | head -n 12
	if [[ -s "$d/stderr.txt" ]]; then
		echo "      client stderr (last lines):"
		tail -n 8 "$d/stderr.txt" | sed 's/^/        /'
	fi
}

# judge version label scenario verdict(pass|fail) -> updates counters/problems
judge() {
	local v="$1" label="$2" s="$3" verdict="$4"
	if [[ "$verdict" == pass ]]; then
		n_pass=$((n_pass + 1))
		if [[ -n "${expected[$s]:-}" ]]; then
			problems+=("$v $label: $s passes but is listed in expected-failures-$v.txt; remove it")
		fi
	else
		n_fail=$((n_fail + 1))
		if [[ -n "${expected[$s]:-}" ]]; then
			n_expected=$((n_expected + 1))
		else
			problems+=("$v $label: $s fails and is not listed in expected-failures-$v.txt")
			unexpected+=("$label $s")
		fi
	fi
}

summaries=()
problems=()
declare -A expected
for v in "${versions[@]}"; do
	t0=$SECONDS
	cli="$(install_suite "$v")"
	read_expected "$repo/conformance/expected-failures-$v.txt"
	# Every client scenario this version has.
	mapfile -t known < <("$node" "$cli" list --client 2>/dev/null | sed -n 's/^  - \([^ ]*\).*/\1/p')
	if [[ ${#known[@]} == 0 ]]; then
		problems+=("$v: 'conformance list --client' listed no scenario")
	fi
	declare -A has=()
	for s in "${known[@]}"; do has[$s]=1; done
	all_scenarios=()

	# --- suites ---------------------------------------------------------------
	for suite in "${suites[@]}"; do
		base="$out/$v/$suite"
		mkdir -p "$base"
		log "$v: suite $suite"
		rc=0
		"$node" "$cli" client --command "$client" --suite "$suite" --timeout "$timeout_ms" \
			-o "$base" </dev/null >"$base.log" 2>"$base.stderr.log" || rc=$?
		n_pass=0 n_fail=0 n_expected=0
		unexpected=()
		saw_summary=0
		while IFS= read -r line; do
			line="$(printf '%s' "$line" | sed 's/\x1b\[[0-9;]*m//g')"
			case "$line" in
			"=== SUITE SUMMARY ===") saw_summary=1 ;;
			"✓ "*:*" passed, "*) s="${line#✓ }"; s="${s%%: *}"; [[ $suite == all ]] && all_scenarios+=("$s"); judge "$v" "$suite" "$s" pass ;;
			"✗ "*:*" passed, "*) s="${line#✗ }"; s="${s%%: *}"; [[ $suite == all ]] && all_scenarios+=("$s"); judge "$v" "$suite" "$s" fail ;;
			"- "*": skipped") s="${line#- }"; s="${s%: skipped}"; log "$v $suite: $s skipped by the suite" ;;
			esac
		done <"$base.log"
		if [[ $saw_summary == 0 ]]; then
			problems+=("$v $suite: the suite printed no summary (exit $rc); see below")
			# (without the scenario contexts, which carry the suite's test secrets)
			tail -n 20 "$base.log" "$base.stderr.log" | grep -v 'With context:' >&2 || true
		fi
		for u in "${unexpected[@]}"; do
			echo "  unexpected failure: $v $u"
			explain "$base" "${u#* }"
		done
		summaries+=("conformance $v $suite: $n_pass passed, $n_fail failed ($n_expected expected)")
	done

	# --- single runs: the client's exit status counts ----------------------------
	if [[ "$single" != none ]]; then
		if [[ ${#all_scenarios[@]} == 0 ]]; then
			# The "all" suite was not run: take the scenarios from the list.
			all_scenarios=("${known[@]}")
		fi
		todo=()
		for s in "${all_scenarios[@]}"; do
			[[ "$single" == auth && "$s" != auth/* ]] && continue
			todo+=("$s")
		done
		base="$out/$v/single"
		mkdir -p "$base"
		log "$v: ${#todo[@]} scenarios one by one ($jobs at a time)"
		export cli client timeout_ms base
		printf '%s\n' "${todo[@]}" | xargs -P "$jobs" -I{} bash -c '
			s="$1"; f="$base/$(printf "%s" "$s" | tr "/" "_")"
			rc=0
			"$(command -v node)" "$cli" client --command "$client" --scenario "$s" \
				--timeout "$timeout_ms" -o "$base" </dev/null >"$f.log" 2>&1 || rc=$?
			echo "$rc" >"$f.rc"' _ {}
		n_pass=0 n_fail=0 n_expected=0
		unexpected=()
		for s in "${todo[@]}"; do
			f="$base/$(printf '%s' "$s" | tr '/' '_')"
			rc="$(cat "$f.rc" 2>/dev/null || echo 99)"
			if [[ "$rc" == 0 ]]; then judge "$v" exit-status "$s" pass; else judge "$v" exit-status "$s" fail; fi
		done
		for u in "${unexpected[@]}"; do
			s="${u#* }"
			f="$base/$(printf '%s' "$s" | tr '/' '_')"
			echo "  unexpected failure: $v $u"
			sed 's/\x1b\[[0-9;]*m//g' "$f.log" | grep -E 'Client exited with code|CLIENT TIMED OUT|^  - |Error:' | head -n 8 | sed 's/^/      /' || true
			explain "$base" "$s"
		done
		summaries+=("conformance $v exit-status: $n_pass passed, $n_fail failed ($n_expected expected)")
	fi

	# --- listed scenarios this version does not have ------------------------------
	for s in "${!expected[@]}"; do
		[[ -n "${has[$s]:-}" ]] || problems+=("$v: $s is listed in expected-failures-$v.txt but this version has no such client scenario; remove it")
	done
	summaries+=("conformance $v: took $((SECONDS - t0))s")
	unset has
done

echo
printf '%s\n' "${summaries[@]}"
echo "conformance total time: $((SECONDS - started))s"
if [[ ${#problems[@]} -gt 0 ]]; then
	echo
	echo "conformance FAILED:"
	printf '  %s\n' "${problems[@]}"
	exit 1
fi
echo "conformance OK: every failure is listed in conformance/expected-failures-<version>.txt"
