#!/usr/bin/env bash
# A real Thunderbird against kartei: starts the built server over HTTPS (self-signed certificate) on a random
# loopback port with a temporary data dir, creates users, a book and a share with the CLI, then runs thunderbird/drive.py,
# which starts Thunderbird headless with a fresh profile and drives its own CardDAV code through Marionette
# (discovery, create the book, initial sync, add/modify/delete in Thunderbird, server-side changes and
# sync-collection, sync without token, stale token, restart). After every step both sides must agree.
# Needs: thunderbird (Debian package), python3 (standard library only), curl. See thunderbird/README.md.
# Usage: tests/interop/thunderbird.sh [path-to-kartei-binary]      (KARTEI_KEEP=1 keeps the temp dir)
set -euo pipefail
KARTEI_BIN=${1:-${KARTEI_BIN:-}}
if [ -n "$KARTEI_BIN" ]; then KARTEI_BIN=$(realpath -m "$KARTEI_BIN"); fi
cd "$(dirname "$0")/../.."
if [ -z "$KARTEI_BIN" ]; then
  KARTEI_BIN=$PWD/target/debug/kartei
  [ -x "$KARTEI_BIN" ] || cargo build --bin kartei
fi
[ -x "$KARTEI_BIN" ] || { echo "no kartei binary at $KARTEI_BIN (cargo build --bin kartei)"; exit 1; }
THUNDERBIRD=${THUNDERBIRD:-thunderbird}
command -v "$THUNDERBIRD" >/dev/null || { echo "thunderbird is not installed (apt-get install thunderbird)"; exit 1; }
command -v curl >/dev/null || { echo "curl is not installed"; exit 1; }
started=$(date +%s)

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
mport=$(free_port)
cat > "$work/kartei.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
[tls]
mode = "self-signed"
hostnames = ["127.0.0.1", "localhost"]
[storage]
data_dir = "$work/data"
[log]
# One line per request, with the Content-Encoding of the answer (checked at the end).
level = "kartei=debug,info"
CONF
server=
cleanup() {
  status=$?
  if [ -s "$work/thunderbird.pgid" ]; then kill -KILL -- "-$(cat "$work/thunderbird.pgid")" 2>/dev/null || true; fi
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ "$status" -ne 0 ]; then
    echo "--- kartei log (tail) ---"; tail -n 40 "$work/server.log" 2>/dev/null || true
    echo "--- thunderbird log (carddav lines, tail) ---"
    grep -aiE 'carddav|error|exception' "$work/thunderbird.log" 2>/dev/null | tail -n 40 || true
  fi
  if [ -n "${KARTEI_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

kartei() { "$KARTEI_BIN" --config "$work/kartei.toml" "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
# The user Thunderbird logs in as (a generated login like k3v8q2m9xa@localhost), with a second own book and
# the contacts of another user ("office") shared with them read-only.
user_json=$(kartei user add --display-name "Thunderbird Interop" --json)
owner_json=$(kartei user add --username office --display-name "Office" --json)
login=$(field "$user_json" username)
kartei book add "$login" craftsmen --display-name "Craftsmen" >/dev/null
kartei share add office contacts "$login" >/dev/null

"$KARTEI_BIN" --config "$work/kartei.toml" serve >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  [ -s "$work/data/tls/cert.pem" ] && curl -s -o /dev/null --cacert "$work/data/tls/cert.pem" "https://127.0.0.1:$port/" && break
  sleep 0.1
done

timeout 300 python3 -B tests/interop/thunderbird/drive.py \
  --base "https://127.0.0.1:$port" --cacert "$work/data/tls/cert.pem" \
  --user "$login" --password "$(field "$user_json" password)" --home-url "$(field "$user_json" carddav_url)" \
  --owner-user "$(field "$owner_json" username)" --owner-password "$(field "$owner_json" password)" \
  --owner-home-url "$(field "$owner_json" carddav_url)" \
  --work "$work" --marionette-port "$mport" --thunderbird "$THUNDERBIRD"
# kartei must not have failed on anything Thunderbird sent.
if grep -E 'status=5[0-9][0-9]|ERROR|panicked' "$work/server.log"; then
  echo "thunderbird: kartei logged server errors (above)"; exit 1
fi
# Thunderbird asks for zstd (`Accept-Encoding: gzip, deflate, br, zstd`), so its multistatus answers came
# zstd-compressed, and the steps above show it read them right.
zstd_answers=$(grep -cE 'status=207 encoding=zstd' "$work/server.log" || true)
echo "thunderbird: $zstd_answers multistatus answers were zstd-compressed"
if [ "$zstd_answers" -eq 0 ]; then
  echo "thunderbird: no answer was zstd-compressed; did Thunderbird stop asking for it?"; exit 1
fi
# The seeded photo card is stored with a zstd frame of its own, which answers send as it is: such an answer is
# several zstd frames in a row (RFC 8878 §3), and Thunderbird must have read it whole.
spliced=$(grep -c 'sent cards from their stored frames' "$work/server.log" || true)
echo "thunderbird: $spliced zstd answers held stored frames"
if [ "$spliced" -eq 0 ]; then
  echo "thunderbird: no answer held a stored frame; was the photo card not stored with one?"; exit 1
fi
echo "thunderbird interop: $(( $(date +%s) - started ))s"
