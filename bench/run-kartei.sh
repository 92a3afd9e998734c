#!/usr/bin/env bash
# Benchmarks a release kartei: bench/run-kartei.sh N C [off|self-signed|both]
#
# Builds the release binaries, starts kartei on a random loopback port with a fresh data directory, creates a
# user (`kartei user add --json`), runs kartei-bench against the user's default book, then stops the server
# and measures a cold start on the filled database (spawn to the first authenticated 207). JSON reports go
# to $RESULTS (default target/bench-results).
# Environment: NO_BUILD=1 skips the build, KARTEI=path runs another server binary, BENCH=path another bench
# client, KEEP=1 keeps the data dir, BENCH_ARGS="--full-syncs 5" passes more options to kartei-bench.
# Exits non-zero when a bench run failed or reported failed checks (CI runs it as a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
C=${2:-8}
MODES=${3:-both}
RESULTS=${RESULTS:-target/bench-results}
mkdir -p "$RESULTS"
[ "$MODES" = both ] && MODES="off self-signed"

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --quiet --bin kartei --bin kartei-bench --features bench
fi
KARTEI=${KARTEI:-target/release/kartei}
BENCH=${BENCH:-target/release/kartei-bench}
FAILED=0

PID=""
# A failed step must not leave a server running.
trap '[ -z "$PID" ] || kill "$PID" 2>/dev/null || true' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

for MODE in $MODES; do
  WORK=$(mktemp -d /tmp/kartei-bench.XXXXXX)
  DATA="$WORK/data"
  PORT=$(free_port)
  cat > "$WORK/kartei.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[tls]
mode = "$MODE"
[storage]
data_dir = "$DATA"
[log]
level = "warn"
TOML
  export KARTEI_CONFIG="$WORK/kartei.toml"
  ACCOUNT=$("$KARTEI" user add --display-name "Bench" --json)
  LOGIN=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["username"])' "$ACCOUNT")
  PASSWORD=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["password"])' "$ACCOUNT")
  if [ "$MODE" = off ]; then SCHEME=http; TLSARGS=(); else SCHEME=https; TLSARGS=(--cacert "$DATA/tls/cert.pem"); fi
  BOOK="$SCHEME://127.0.0.1:$PORT/dav/addressbooks/$LOGIN/contacts/"
  CURLTLS=(); [ "$MODE" = off ] || CURLTLS=(--cacert "$DATA/tls/cert.pem")

  # Starts the server (PID) and sets STARTUP to the milliseconds from spawn to the first authenticated 207.
  start_server() {
    local t0 code
    t0=$(now_ms)
    "$KARTEI" serve > "$WORK/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 2000); do
      code=$(curl -s -o /dev/null -w '%{http_code}' "${CURLTLS[@]}" -u "$LOGIN:$PASSWORD" -X PROPFIND \
        -H 'Depth: 0' "$BOOK" 2>/dev/null || true)
      if [ "$code" = 207 ]; then STARTUP=$(( $(now_ms) - t0 )); return 0; fi
      sleep 0.005
    done
    echo "kartei did not come up; log:" >&2; cat "$WORK/server.log" >&2; kill "$PID"; return 1
  }
  stop_server() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }

  start_server
  STARTUP_EMPTY=$STARTUP
  OUT="$RESULTS/kartei-$MODE-n$N-c$C.json"
  set +e
  "$BENCH" --url "$BOOK" --user "$LOGIN" --password="$PASSWORD" -n "$N" -c "$C" --pid "$PID" \
    --data-dir "$DATA" "${TLSARGS[@]}" --label "kartei $MODE" --json ${BENCH_ARGS:-} > "$OUT"
  STATUS=$?
  set -e
  stop_server
  # Cold start on the filled database (the WAL was checkpointed by the graceful stop).
  start_server
  STARTUP_FULL=$STARTUP
  STARTUP_RSS=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
  stop_server
  python3 - "$OUT" "$STARTUP_EMPTY" "$STARTUP_FULL" "$STARTUP_RSS" <<'PY'
import json, sys
path, empty, full, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(path))
r["startup_empty_ms"] = empty
r["startup_filled_ms"] = full
r["startup_filled_rss_mb"] = round(rss / 1024, 1)
json.dump(r, open(path, "w"), indent=2)
print(f"startup: {empty} ms empty, {full} ms with {r['n']} cards (first authenticated 207; includes curl)", file=sys.stderr)
PY
  echo "report: $OUT (bench exit $STATUS)" >&2
  [ "$STATUS" -eq 0 ] || FAILED=1
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
done
exit "$FAILED"
