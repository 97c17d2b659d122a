#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the tests (the store and one bot end-to-end test run on it
# as well as on SQLite).
#
#   bash scripts/postgres.sh start DIR   # DIR: a fresh folder, e.g. from mktemp -d; prints postgresql+asyncpg://janus@127.0.0.1:PORT/janus on stdout
#   bash scripts/postgres.sh stop DIR    # stops it and deletes DIR
#
# Uses Debian's postgresql package (installed with apt-get when missing and this runs as root). PostgreSQL
# refuses to run as root, so as root the server runs as the package's `postgres` user; otherwise as the
# current user. The data directory is DIR (fsync off: it is thrown away), the socket too, and the server
# listens on 127.0.0.1 only.
set -euo pipefail
action=${1:?usage: postgres.sh start|stop DIR}
dir=${2:?usage: postgres.sh start|stop DIR}

log() { echo "postgres.sh: $*" >&2; }

bindir() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z "$found" && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing Debian's postgresql package"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends postgresql >&2 ||
            { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends postgresql >&2; }
        found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    [[ -n "$found" ]] || { log "no PostgreSQL server found (apt-get install postgresql)"; return 1; }
    echo "$found"
}

as_owner() {  # run a server command as the user owning the data directory
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$action" in
start)
    bin=$(bindir)
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U janus --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    port=$(free_port)
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 start \
        -o "-h 127.0.0.1 -p $port -k $dir/data -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >/dev/null || { cat "$dir/data/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U janus janus
    echo "$bin" >"$dir/bindir"
    echo "postgresql+asyncpg://janus@127.0.0.1:$port/janus"
    ;;
stop)
    if [[ -f "$dir/bindir" ]]; then
        as_owner "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    log "unknown action $action (start or stop)"
    exit 2
    ;;
esac
