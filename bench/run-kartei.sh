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
source bench/servers.sh
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

for MODE in $MODES; do
  WORK=$(mktemp -d /tmp/kartei-bench.XXXXXX)
  kartei_prepare "$MODE" "$WORK"
  kartei_start "$WORK"
  STARTUP_EMPTY=$STARTUP
  OUT="$RESULTS/kartei-$MODE-n$N-c$C.json"
  set +e
  "$BENCH" --url "$KARTEI_BOOK" --user "$KARTEI_LOGIN" --password="$KARTEI_PASSWORD" -n "$N" -c "$C" \
    --pid "$KARTEI_PID" --data-dir "$KARTEI_DATA" "${KARTEI_TLS[@]}" --label "kartei $MODE" --json ${BENCH_ARGS:-} > "$OUT"
  STATUS=$?
  set -e
  stop_server "$KARTEI_PID"
  # Cold start on the filled database (the WAL was checkpointed by the graceful stop).
  kartei_start "$WORK"
  STARTUP_FULL=$STARTUP
  STARTUP_RSS=$(awk '/VmHWM/ {print $2}' /proc/$KARTEI_PID/status)
  stop_server "$KARTEI_PID"
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
