#!/usr/bin/env bash
# GETs while slow clients stream big answers: bench/slow-streams.sh [SLOW] [N]
#
# Starts a release kartei (HTTPS, self-signed) with two users. User A's book gets N cards (default 10,000);
# then SLOW clients (default 10) download it whole at 50 KB/s, each holding a streamed answer and its
# SQLite reader for the whole run. Meanwhile kartei-bench runs against user B's empty book with
# `--gets 10000`; its GET line is what this measures: reads must not suffer when more answers are in
# flight than the reader pool holds (8). Environment: KARTEI=path runs another server binary.
set -euo pipefail
cd "$(dirname "$0")/.."
SLOW=${1:-10}
N=${2:-10000}
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin kartei --bin kartei-bench --features bench
KARTEI=${KARTEI:-target/release/kartei}
BENCH=target/release/kartei-bench
WORK=$(mktemp -d /tmp/kartei-slow.XXXXXX)
DATA="$WORK/data"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf '[server]\nlisten = "127.0.0.1:%s"\n[tls]\nmode = "self-signed"\n[storage]\ndata_dir = "%s"\n[log]\nlevel = "warn"\n' \
  "$PORT" "$DATA" > "$WORK/kartei.toml"
export KARTEI_CONFIG="$WORK/kartei.toml"
account() { "$KARTEI" user add --display-name Bench --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["username"], d["password"])'; }
read -r USER_A PASS_A < <(account)
read -r USER_B PASS_B < <(account)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
"$KARTEI" serve > "$WORK/server.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
CERT="$DATA/tls/cert.pem"
BASE="https://127.0.0.1:$PORT/dav/addressbooks"
for _ in $(seq 1 100); do [ -f "$CERT" ] && curl -s -o /dev/null --cacert "$CERT" "https://127.0.0.1:$PORT/" && break; sleep 0.1; done
"$BENCH" --url "$BASE/$USER_A/contacts/" --user "$USER_A" --password "$PASS_A" --cacert "$CERT" -n "$N" > /dev/null 2>&1
for _ in $(seq 1 "$SLOW"); do
  curl -s --http1.1 --limit-rate 50k --cacert "$CERT" -u "$USER_A:$PASS_A" "$BASE/$USER_A/contacts/" -o /dev/null &
  PIDS+=("$!")
done
sleep 1
echo "$SLOW slow whole-book downloads of $N cards in flight; user B's book:"
"$BENCH" --url "$BASE/$USER_B/contacts/" --user "$USER_B" --password "$PASS_B" --cacert "$CERT" -n 1000 --gets 10000 \
  --pid "$SERVER" 2>&1 | grep "GET x"
kill "${PIDS[@]}" 2>/dev/null || true
wait 2>/dev/null || true
rm -rf "$WORK"
