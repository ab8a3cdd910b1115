#!/usr/bin/env bash
# setup-postgres.sh installs what the PostgreSQL tests (store.Postgres, through
# internal/pgtest) need: Debian's PostgreSQL server binaries (initdb, pg_ctl,
# postgres), from the package postgresql. Safe to run again: when initdb is
# already there it only prints where the binaries are.
#
# The tests start throwaway clusters of their own, as an unprivileged user;
# nothing here creates or starts a cluster. Go tests find the binaries through
# internal/pgtest (EVERGRANT_PG_BIN overrides the directory).
# Needs: Debian's apt-get and root (or sudo). Reads no standard input.
# Prints the binaries' directory on standard output.
set -euo pipefail

log() { printf 'setup-postgres: %s\n' "$*" >&2; }

# bin_dir prints the directory holding initdb, pg_ctl and postgres, or fails.
bin_dir() {
	local d
	if [[ -n "${EVERGRANT_PG_BIN:-}" ]]; then
		d="$EVERGRANT_PG_BIN"
		[[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && { echo "$d"; return 0; }
		return 1
	fi
	# Debian keeps the server binaries off PATH, one directory per major
	# version; prefer the newest.
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
			echo "$d"
			return 0
		fi
	done
	if command -v initdb >/dev/null 2>&1; then
		d="$(dirname "$(readlink -f "$(command -v initdb)")")"
		[[ -x "$d/pg_ctl" && -x "$d/postgres" ]] && { echo "$d"; return 0; }
	fi
	return 1
}

if dir="$(bin_dir)"; then
	log "already installed: $("$dir/postgres" --version 2>/dev/null || echo "$dir/postgres")"
	echo "$dir"
	exit 0
fi

if [[ -n "${EVERGRANT_PG_BIN:-}" ]]; then
	log "EVERGRANT_PG_BIN=$EVERGRANT_PG_BIN has no initdb, pg_ctl and postgres"
	exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
	log "apt-get not found; install the PostgreSQL server yourself (Debian package: postgresql) and set EVERGRANT_PG_BIN to the directory of its initdb"
	exit 1
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo=(sudo -n)
	else
		log "not root and no sudo; run as root: apt-get install postgresql"
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
"${sudo[@]}" apt-get update -qq </dev/null
log "apt-get install postgresql"
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql </dev/null >&2

if ! dir="$(bin_dir)"; then
	log "installing postgresql did not produce initdb, pg_ctl and postgres under /usr/lib/postgresql/*/bin"
	exit 1
fi
log "installed: $("$dir/postgres" --version 2>/dev/null)"
echo "$dir"
