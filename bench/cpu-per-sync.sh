#!/usr/bin/env bash
# CPU per full sync of 1,000 cards, client and server apart: bench/cpu-per-sync.sh SERVER CLIENT MODE [ARGS]
#
# Starts SERVER (a kartei binary) with a fresh data directory and MODE = off | self-signed, runs CLIENT (a
# kartei-bench binary) once with `--full-syncs 201` and once with `--full-syncs 1`, and prints the difference
# / 200: the client's CPU (from /usr/bin/time) and the server's (from /proc/PID/stat) per extra full sync,
# plus the median wall time. ARGS go to the bench (e.g. --no-gzip, --http1). Used for BENCHMARKS.md's
# zlib-rs and bench-client measurements; run two binaries alternately to compare them.
set -euo pipefail
SERVER=$(realpath "$1"); CLIENT=$(realpath "$2"); MODE=$3; shift 3

# One bench run on a fresh server; prints "client_seconds server_seconds median_ms".
run_once() {
  local syncs=$1; shift
  local work pid port login password scheme tls=()
  work=$(mktemp -d /tmp/kartei-cpu.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf '[server]\nlisten = "127.0.0.1:%s"\n[tls]\nmode = "%s"\n[storage]\ndata_dir = "%s/data"\n[log]\nlevel = "warn"\n' \
    "$port" "$MODE" "$work" > "$work/kartei.toml"
  export KARTEI_CONFIG="$work/kartei.toml"
  read -r login password < <("$SERVER" user add --display-name Bench --json |
    python3 -c 'import json,sys; a=json.load(sys.stdin); print(a["username"], a["password"])')
  "$SERVER" serve > "$work/server.log" 2>&1 &
  pid=$!
  # Stop the server whatever happens to the bench.
  trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' RETURN
  if [ "$MODE" = off ]; then scheme=http; else scheme=https; tls=(--cacert "$work/data/tls/cert.pem"); fi
  # Up when it answers (any status; the certificate is not checked here).
  for _ in $(seq 1 500); do
    curl -sk -o /dev/null "$scheme://127.0.0.1:$port/" && break
    sleep 0.01
  done
  local out
  out=$( { /usr/bin/time -f 'CPU %U %S' "$CLIENT" --url "$scheme://127.0.0.1:$port/dav/addressbooks/$login/contacts/" \
    --user "$login" --password="$password" -n 1000 -c 8 "${tls[@]}" --full-syncs "$syncs" "$@" 2>&1 >/dev/null; } || true)
  local client server median
  client=$(awk '/^CPU / {print $2 + $3}' <<< "$out")
  server=$(awk '{print ($14 + $15) / 100}' "/proc/$pid/stat")
  median=$(awk '/median of [0-9]+ full syncs/ {print $(NF-1)} /= initial full sync/ {i=$(NF-1)} END {}' <<< "$out")
  grep -q "0 failed checks" <<< "$out" || { echo "the bench reported failed checks:" >&2; echo "$out" >&2; return 1; }
  echo "$client $server ${median:-0}"
}

read -r c1 s1 _ < <(run_once 1 "$@")
read -r c2 s2 median < <(run_once 201 "$@")
python3 - "$c1" "$s1" "$c2" "$s2" "$median" "$MODE" <<'PY'
import sys
c1, s1, c2, s2, median = map(float, sys.argv[1:6])
print(f"{sys.argv[6]}: per full sync client {(c2 - c1) / 200 * 1000:.1f} ms CPU, "
      f"server {(s2 - s1) / 200 * 1000:.1f} ms CPU, median wall {median:.1f} ms")
PY
