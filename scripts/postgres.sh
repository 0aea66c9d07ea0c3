#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store's tests and benchmarks.
#
#   scripts/postgres.sh start   install PostgreSQL if missing, start the cluster, print its URL
#   scripts/postgres.sh url     print the URL of the running cluster
#   scripts/postgres.sh pause   stop the cluster, keeping its data (`start` brings it back on
#                               the same port: the soak benchmark's store outage)
#   scripts/postgres.sh stop    stop the cluster and delete its data folder
#
# Every command is idempotent. The cluster listens on 127.0.0.1 only, trusts local connections
# (no password) and trades durability for speed (fsync off): it holds test data, nothing else.
# Settings: WHETSTONE_PG_DIR (default /tmp/whetstone-pg), WHETSTONE_PG_PORT (default 54329; the
# next free port is taken when that one is busy), WHETSTONE_PG_DB (default whetstone_test).
set -euo pipefail

DIR="${WHETSTONE_PG_DIR:-/tmp/whetstone-pg}"
DATA="$DIR/data"
PORT_FILE="$DIR/port"
DB="${WHETSTONE_PG_DB:-whetstone_test}"

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {
  # The newest installed server version.
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n "$d" && -x "$d/initdb" ]] && echo "$d"
}

install() {
  bindir >/dev/null && return
  [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed; as root run: apt-get install -y postgresql"
  echo "postgres.sh: installing PostgreSQL (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  # Debian's package starts its own cluster on 5432; the tests do not use it.
  bindir >/dev/null || die "apt-get installed no PostgreSQL server binaries"
}

# The server refuses to run as root: as root, act as the `postgres` user the package creates.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

running() {
  local bin
  bin=$(bindir) || return 1
  [[ -f "$DATA/PG_VERSION" ]] && as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

url() {
  echo "postgresql://postgres@127.0.0.1:$(cat "$PORT_FILE")/$DB"
}

start() {
  install
  local bin port
  bin=$(bindir)
  if ! running; then
    mkdir -p "$DIR"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$DIR"
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
      rm -rf "$DATA"
      as_owner "$bin/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 \
        --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 || die "initdb failed, see $DIR/initdb.log"
    fi
    # A paused cluster comes back on its own port, so clients holding its URL reconnect.
    port="${WHETSTONE_PG_PORT:-54329}"
    [[ -f "$PORT_FILE" ]] && port=$(cat "$PORT_FILE")
    while ! port_free "$port"; do port=$((port + 1)); done
    echo "$port" >"$PORT_FILE"
    # The socket goes in the data folder: /var/run/postgresql may not exist or be writable.
    as_owner "$bin/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start -o \
      "-p $port -c listen_addresses=127.0.0.1 -k $DATA -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=200" \
      >/dev/null || die "the server did not start, see $DIR/server.log"
  fi
  port=$(cat "$PORT_FILE")
  local psql=("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
  if [[ -z $("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'") ]]; then
    "${psql[@]}" -c "CREATE DATABASE \"$DB\"" >/dev/null
  fi
  url
}

pause() {
  if running; then
    as_owner "$(bindir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
  fi
}

stop() {
  if running; then
    as_owner "$(bindir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
  fi
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  pause) pause ;;
  url) running || die "not running (scripts/postgres.sh start)"; url ;;
  *) echo "usage: $0 start|pause|stop|url" >&2; exit 2 ;;
esac
