#!/usr/bin/env bash
# Runs kartei-bench against Radicale and Xandikos: bench/run-peers.sh [N] [C] [radicale|xandikos|both]
#
# Both run on a random loopback port over HTTPS (self-signed) with htpasswd Basic auth (bcrypt, cost 5 like
# `htpasswd -B`; Radicale with cache_logins on, Xandikos has no login cache). Installs them with pip when
# missing. JSON reports go to $RESULTS (default target/bench-results). NO_BUILD=1 skips the build, KEEP=1
# keeps the servers' data directories, BENCH=path runs another bench client, BENCH_ARGS="--full-syncs 5" passes
# more options to kartei-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
C=${2:-8}
WHICH=${3:-both}
RESULTS=${RESULTS:-target/bench-results}
mkdir -p "$RESULTS"
[ "$WHICH" = both ] && WHICH="radicale xandikos"

python3 -c 'import radicale, xandikos, bcrypt' 2>/dev/null || python3 -m pip install --quiet radicale xandikos bcrypt
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --quiet --bin kartei-bench --features bench
fi
BENCH=${BENCH:-target/release/kartei-bench}
PID=""
# A failed step must not leave a server running.
trap '[ -z "$PID" ] || kill "$PID" 2>/dev/null || true' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
USER_NAME=bench
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(12))')

wait_up() { # URL CURL-ARGS...: waits for an authenticated answer to PROPFIND Depth 0
  local url=$1; shift
  for _ in $(seq 1 1000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$@" -u "$USER_NAME:$PASSWORD" -X PROPFIND -H 'Depth: 0' "$url" || true)
    case $code in 207|404) return 0 ;; esac
    sleep 0.05
  done
  echo "server at $url did not come up" >&2; return 1
}

for PEER in $WHICH; do
  WORK=$(mktemp -d /tmp/peer-bench.XXXXXX)
  PORT=$(free_port)
  python3 -c 'import bcrypt,sys; print(sys.argv[1] + ":" + bcrypt.hashpw(sys.argv[2].encode(), bcrypt.gensalt(rounds=5)).decode())' \
    "$USER_NAME" "$PASSWORD" > "$WORK/htpasswd"
  case $PEER in
    radicale)
      DATA="$WORK/collections"
      openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
      cat > "$WORK/radicale.conf" <<CONF
[server]
hosts = 127.0.0.1:$PORT
ssl = True
certificate = $WORK/cert.pem
key = $WORK/key.pem
[auth]
type = htpasswd
htpasswd_filename = $WORK/htpasswd
htpasswd_encryption = bcrypt
cache_logins = True
[rights]
type = owner_only
[storage]
filesystem_folder = $DATA
[logging]
level = warning
CONF
      python3 -m radicale --config "$WORK/radicale.conf" > "$WORK/server.log" 2>&1 &
      PID=$!
      TLS=(--insecure) # the bench does not need to verify its own throwaway certificate
      BOOK="https://127.0.0.1:$PORT/$USER_NAME/contacts/"
      wait_up "https://127.0.0.1:$PORT/$USER_NAME/" -k
      curl -sfk -u "$USER_NAME:$PASSWORD" -X MKCOL -H 'Content-Type: application/xml' "$BOOK" --data \
        '<?xml version="1.0"?><d:mkcol xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:set><d:prop><d:resourcetype><d:collection/><c:addressbook/></d:resourcetype><d:displayname>Bench</d:displayname></d:prop></d:set></d:mkcol>' >/dev/null
      ;;
    xandikos)
      DATA="$WORK/xandikos"
      xandikos serve -d "$DATA" --defaults --current-user-principal "/$USER_NAME/" --state-dir "$WORK/state" \
        --autocert --htpasswd "$WORK/htpasswd" -l 127.0.0.1 -p "$PORT" --no-detect-systemd > "$WORK/server.log" 2>&1 &
      PID=$!
      TLS=(--insecure)
      BOOK="https://127.0.0.1:$PORT/$USER_NAME/contacts/addressbook/"
      wait_up "$BOOK" -k
      ;;
  esac
  OUT="$RESULTS/$PEER-n$N-c$C.json"
  set +e
  "$BENCH" --url "$BOOK" --user "$USER_NAME" --password="$PASSWORD" -n "$N" -c "$C" --pid "$PID" --data-dir "$DATA" \
    "${TLS[@]}" --label "$PEER https" --json ${BENCH_ARGS:-} > "$OUT"
  STATUS=$?
  set -e
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  echo "report: $OUT (bench exit $STATUS)" >&2
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
done
