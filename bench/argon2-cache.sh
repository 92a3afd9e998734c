#!/usr/bin/env bash
# What kartei's login cache saves: GET rate with the cache (default [auth] cache_secs = 300) and without it
# (cache_secs = 0: one Argon2 verification per request), plus the time of one verification on this machine.
# bench/argon2-cache.sh [N] [C]   (plain HTTP on loopback; JSON reports in $RESULTS, default target/bench-results)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
C=${2:-8}
RESULTS=${RESULTS:-target/bench-results}
mkdir -p "$RESULTS"
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --quiet --bin kartei --bin kartei-bench --features bench
fi
PID=""
# A failed step must not leave a server running.
trap '[ -z "$PID" ] || kill "$PID" 2>/dev/null || true' EXIT
target/release/kartei-bench --argon2 > "$RESULTS/argon2-verify.json"
for CACHE in 300 0; do
  WORK=$(mktemp -d /tmp/kartei-argon2.XXXXXX)
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf '[server]\nlisten = "127.0.0.1:%s"\n[tls]\nmode = "off"\n[storage]\ndata_dir = "%s"\n[auth]\ncache_secs = %s\n[log]\nlevel = "warn"\n' \
    "$PORT" "$WORK/data" "$CACHE" > "$WORK/kartei.toml"
  export KARTEI_CONFIG="$WORK/kartei.toml"
  ACCOUNT=$(target/release/kartei user add --json)
  LOGIN=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["username"])' "$ACCOUNT")
  PASSWORD=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["password"])' "$ACCOUNT")
  target/release/kartei serve > "$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 400); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.01; done
  echo "== [auth] cache_secs = $CACHE" >&2
  target/release/kartei-bench --url "http://127.0.0.1:$PORT/dav/addressbooks/$LOGIN/contacts/" --user "$LOGIN" \
    --password="$PASSWORD" -n "$N" -c "$C" --pid "$PID" --label "kartei cache_secs=$CACHE" --json \
    > "$RESULTS/argon2-cache$CACHE-n$N.json" || true
  kill -TERM "$PID"; wait "$PID" || true
  rm -rf "$WORK"
done
