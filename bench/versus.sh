#!/usr/bin/env bash
# Full syncs of kartei and a peer in turn: bench/versus.sh [N] [radicale|xandikos|kartei:BINARY] [ROUNDS]
#
# Starts kartei (self-signed HTTPS, or plain HTTP with TLS=off; a fresh data directory) and the peer (see
# peer_start in bench/servers.sh) side by side, uploads the same N cards to both, then full-syncs (PROPFIND
# Depth 1 + multigets of 100) kartei and the peer alternately for ROUNDS rounds (default 20) with
# `kartei-bench --versus-url`. Both are timed within the same second, so the machine's drift between minutes
# cancels out of each round's ratio.
# `kartei:BINARY` as the peer runs another kartei build the same way: an A/B of two builds of the server.
# TLS=off runs both over plain HTTP (kartei with `[tls] mode = "off"`, as behind a TLS-terminating proxy;
# Radicale with `ssl = False`): the issue's targets may be stated with HTTPS off or on.
# The JSON report goes to $RESULTS/versus-PEER-nN[-http].json (default target/bench-results). NO_BUILD=1
# skips the build, KARTEI=/BENCH= run other binaries, BENCH_ARGS passes more options to kartei-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh
N=${1:-1000}
PEER=${2:-radicale}
ROUNDS=${3:-20}
RESULTS=${RESULTS:-target/bench-results}
mkdir -p "$RESULTS"
case ${TLS:=on} in
  on) KARTEI_MODE=self-signed SCHEME=https SUFFIX= ;;
  off) KARTEI_MODE=off SCHEME=http SUFFIX=-http ;;
  *) echo "TLS=$TLS: on or off" >&2; exit 1 ;;
esac
export PEER_TLS=$TLS

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --quiet --bin kartei --bin kartei-bench --features bench
fi
KARTEI=${KARTEI:-target/release/kartei}
BENCH=${BENCH:-target/release/kartei-bench}

WORK=$(mktemp -d /tmp/versus-bench.XXXXXX)
mkdir "$WORK/kartei" "$WORK/peer"
case $PEER in
  kartei:*)
    # The other build, prepared and started as kartei is; the first build's details are set again below.
    KARTEI_A=$KARTEI
    KARTEI=$(realpath "${PEER#kartei:}")
    kartei_prepare "$KARTEI_MODE" "$WORK/peer"
    kartei_start "$WORK/peer"
    PEER_PID=$KARTEI_PID PEER_BOOK=$KARTEI_BOOK PEER_USER=$KARTEI_LOGIN PEER_PASSWORD=$KARTEI_PASSWORD
    KARTEI=$KARTEI_A
    PEER_NAME="kartei B $SCHEME"
    ;;
  *) PEER_NAME="$PEER $SCHEME" ;;
esac
kartei_prepare "$KARTEI_MODE" "$WORK/kartei"
kartei_start "$WORK/kartei"
case $PEER in kartei:*) ;; *) peer_start "$PEER" "$WORK/peer" ;; esac
OUT="$RESULTS/versus-$(basename "${PEER#kartei:}")-n$N$SUFFIX.json"
set +e
"$BENCH" --url "$KARTEI_BOOK" --user "$KARTEI_LOGIN" --password="$KARTEI_PASSWORD" "${KARTEI_TLS[@]}" \
  --pid "$KARTEI_PID" --label "kartei $SCHEME" \
  --versus-url "$PEER_BOOK" --versus-user "$PEER_USER" --versus-password="$PEER_PASSWORD" --versus-insecure \
  --versus-pid "$PEER_PID" --versus-label "$PEER_NAME" \
  -n "$N" --rounds "$ROUNDS" --json ${BENCH_ARGS:-} > "$OUT"
STATUS=$?
set -e
stop_server "$KARTEI_PID"
stop_server "$PEER_PID"
echo "report: $OUT (bench exit $STATUS)" >&2
[ -n "${KEEP:-}" ] || rm -rf "$WORK"
exit "$STATUS"
