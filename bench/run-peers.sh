#!/usr/bin/env bash
# Runs kartei-bench against Radicale and Xandikos: bench/run-peers.sh [N] [C] [radicale|xandikos|both]
#
# Both run on a random loopback port over HTTPS (self-signed) with htpasswd Basic auth; see peer_start in
# bench/servers.sh; PEER_TLS=off runs Radicale over plain HTTP (Xandikos cannot). Installs them with pip
# when missing. JSON reports go to $RESULTS (default target/bench-results). NO_BUILD=1 skips the build,
# KEEP=1 keeps the servers' data directories, BENCH=path runs another bench client, BENCH_ARGS="--full-syncs
# 5" passes more options to kartei-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh
N=${1:-1000}
C=${2:-8}
WHICH=${3:-both}
RESULTS=${RESULTS:-target/bench-results}
mkdir -p "$RESULTS"
[ "$WHICH" = both ] && WHICH="radicale xandikos"

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --quiet --bin kartei-bench --features bench
fi
BENCH=${BENCH:-target/release/kartei-bench}

for PEER in $WHICH; do
  WORK=$(mktemp -d /tmp/peer-bench.XXXXXX)
  peer_start "$PEER" "$WORK"
  SUFFIX=
  [ "$PEER_SCHEME" = http ] && SUFFIX=-http
  OUT="$RESULTS/$PEER-n$N-c$C$SUFFIX.json"
  set +e
  # --insecure: the bench need not verify the peer's throwaway certificate.
  "$BENCH" --url "$PEER_BOOK" --user "$PEER_USER" --password="$PEER_PASSWORD" -n "$N" -c "$C" --pid "$PEER_PID" \
    --data-dir "$PEER_DATA" --insecure --label "$PEER $PEER_SCHEME" --json ${BENCH_ARGS:-} > "$OUT"
  STATUS=$?
  set -e
  stop_server "$PEER_PID"
  echo "report: $OUT (bench exit $STATUS)" >&2
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
done
