#!/usr/bin/env bash
# Instructions per full sync of 1,000 cards, counted by callgrind: bench/ir-per-sync.sh SERVER [CLIENT] [ARGS]
#
# Runs SERVER (a kartei binary) under valgrind's callgrind, fresh data directory, self-signed HTTPS, once with
# `--full-syncs 1` and once with `--full-syncs 21` of CLIENT (default target/release/kartei-bench), and prints
# the difference / 20: the server's user-space instructions per extra full sync. Unlike wall or CPU time on a
# shared 2-core VM (±10 % between runs), the count repeats to within 0.1 %, so it can tell a 1 % change.
# It does not see the kernel, cache misses or waiting; confirm a change's effect on time with cpu-per-sync.sh.
# ARGS go to the bench (e.g. --no-gzip). Each run takes 15-30 s.
set -euo pipefail
SERVER=$(realpath "$1"); CLIENT=$(realpath "${2:-target/release/kartei-bench}"); shift $(( $# >= 2 ? 2 : 1 ))
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }

# One bench run against the server under callgrind; prints the instructions it executed.
count() {
  local syncs=$1; shift
  local work pid port login password
  work=$(mktemp -d /tmp/kartei-ir.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf '[server]\nlisten = "127.0.0.1:%s"\n[tls]\nmode = "self-signed"\n[storage]\ndata_dir = "%s/data"\n[log]\nlevel = "warn"\n' \
    "$port" "$work" > "$work/kartei.toml"
  export KARTEI_CONFIG="$work/kartei.toml"
  read -r login password < <("$SERVER" user add --display-name Bench --json |
    python3 -c 'import json,sys; a=json.load(sys.stdin); print(a["username"], a["password"])')
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$SERVER" serve > "$work/server.log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' RETURN
  for _ in $(seq 1 1200); do
    curl -sk -o /dev/null "https://127.0.0.1:$port/" && break
    sleep 0.05
  done
  "$CLIENT" --url "https://127.0.0.1:$port/dav/addressbooks/$login/contacts/" --user "$login" --password="$password" \
    -n 1000 -c 8 --cacert "$work/data/tls/cert.pem" --full-syncs "$syncs" --gets 0 "$@" > /dev/null 2>&1 ||
    { echo "the bench failed; server log:" >&2; cat "$work/server.log" >&2; return 1; }
  # A graceful stop lets callgrind write its totals.
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  awk '/Collected :/ {print $NF}' "$work/server.log"
}

one=$(count 1 "$@")
many=$(count 21 "$@")
echo "$(( (many - one) / 20 )) instructions per full sync (server, user space)"
