# Sourced by the bench scripts: starts kartei, Radicale and Xandikos on random loopback ports, each in its own
# work directory, and stops them. A script that sources this must run with `set -euo pipefail` from the
# project root. Every server started is killed when the script exits, even after a failed step.

SERVER_PIDS=()
trap 'for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

# stop_server PID: a graceful stop (kartei checkpoints its WAL on SIGTERM).
stop_server() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# kartei_prepare MODE WORK: writes WORK/kartei.toml (TLS mode off or self-signed, data in WORK/data, its
# KARTEI_CONFIG is exported) and creates a user. Sets KARTEI_LOGIN, KARTEI_PASSWORD, KARTEI_BOOK (the user's
# default book), KARTEI_DATA, KARTEI_TLS (kartei-bench options) and KARTEI_CURL (curl options).
kartei_prepare() {
  local mode=$1 work=$2 scheme=https account port
  port=$(free_port)
  KARTEI_DATA="$work/data"
  cat > "$work/kartei.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[tls]
mode = "$mode"
[storage]
data_dir = "$KARTEI_DATA"
[log]
level = "warn"
TOML
  export KARTEI_CONFIG="$work/kartei.toml"
  account=$("$KARTEI" user add --display-name "Bench" --json)
  KARTEI_LOGIN=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["username"])' "$account")
  KARTEI_PASSWORD=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["password"])' "$account")
  KARTEI_TLS=(--cacert "$KARTEI_DATA/tls/cert.pem")
  KARTEI_CURL=(--cacert "$KARTEI_DATA/tls/cert.pem")
  if [ "$mode" = off ]; then scheme=http; KARTEI_TLS=(); KARTEI_CURL=(); fi
  KARTEI_BOOK="$scheme://127.0.0.1:$port/dav/addressbooks/$KARTEI_LOGIN/contacts/"
}

# kartei_start WORK: starts the prepared server (KARTEI_PID, log in WORK/server.log) and sets STARTUP to the
# milliseconds from spawn to the first authenticated 207.
kartei_start() {
  local work=$1 t0 code
  t0=$(now_ms)
  "$KARTEI" serve > "$work/server.log" 2>&1 &
  KARTEI_PID=$!
  SERVER_PIDS+=("$KARTEI_PID")
  for _ in $(seq 1 2000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${KARTEI_CURL[@]}" -u "$KARTEI_LOGIN:$KARTEI_PASSWORD" \
      -X PROPFIND -H 'Depth: 0' "$KARTEI_BOOK" 2>/dev/null || true)
    if [ "$code" = 207 ]; then STARTUP=$(( $(now_ms) - t0 )); return 0; fi
    sleep 0.005
  done
  echo "kartei did not come up; log:" >&2; cat "$work/server.log" >&2; return 1
}

# peer_start PEER WORK: starts radicale or xandikos (pip-installed when missing) over HTTPS with its own
# self-signed certificate and htpasswd Basic auth (bcrypt, cost 5 like `htpasswd -B`; Radicale with
# cache_logins on, Xandikos has no login cache) for the user `bench` with a random password. Sets PEER_PID,
# PEER_BOOK (an empty address book), PEER_DATA, PEER_USER, PEER_PASSWORD and PEER_SCHEME. With PEER_TLS=off
# Radicale serves plain HTTP instead; Xandikos cannot (it allows --htpasswd only with --autocert).
peer_start() {
  local peer=$1 work=$2 port scheme=https ssl=True
  if [ "${PEER_TLS:-on}" = off ]; then
    [ "$peer" = radicale ] || { echo "$peer serves htpasswd logins only over HTTPS" >&2; return 1; }
    scheme=http ssl=False
  fi
  PEER_SCHEME=$scheme
  python3 -c "import $peer, bcrypt" 2>/dev/null || python3 -m pip install --quiet "$peer" bcrypt
  port=$(free_port)
  PEER_USER=bench
  PEER_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
  python3 -c 'import bcrypt,sys; print(sys.argv[1] + ":" + bcrypt.hashpw(sys.argv[2].encode(), bcrypt.gensalt(rounds=5)).decode())' \
    "$PEER_USER" "$PEER_PASSWORD" > "$work/htpasswd"
  case $peer in
    radicale)
      PEER_DATA="$work/collections"
      openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
      cat > "$work/radicale.conf" <<CONF
[server]
hosts = 127.0.0.1:$port
ssl = $ssl
certificate = $work/cert.pem
key = $work/key.pem
[auth]
type = htpasswd
htpasswd_filename = $work/htpasswd
htpasswd_encryption = bcrypt
cache_logins = True
[rights]
type = owner_only
[storage]
filesystem_folder = $PEER_DATA
[logging]
level = warning
CONF
      python3 -m radicale --config "$work/radicale.conf" > "$work/server.log" 2>&1 &
      PEER_PID=$!
      SERVER_PIDS+=("$PEER_PID")
      PEER_BOOK="$scheme://127.0.0.1:$port/$PEER_USER/contacts/"
      peer_wait_up "$scheme://127.0.0.1:$port/$PEER_USER/"
      curl -sfk -u "$PEER_USER:$PEER_PASSWORD" -X MKCOL -H 'Content-Type: application/xml' "$PEER_BOOK" --data \
        '<?xml version="1.0"?><d:mkcol xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:set><d:prop><d:resourcetype><d:collection/><c:addressbook/></d:resourcetype><d:displayname>Bench</d:displayname></d:prop></d:set></d:mkcol>' >/dev/null
      ;;
    xandikos)
      PEER_DATA="$work/xandikos"
      xandikos serve -d "$PEER_DATA" --defaults --current-user-principal "/$PEER_USER/" --state-dir "$work/state" \
        --autocert --htpasswd "$work/htpasswd" -l 127.0.0.1 -p "$port" --no-detect-systemd > "$work/server.log" 2>&1 &
      PEER_PID=$!
      SERVER_PIDS+=("$PEER_PID")
      PEER_BOOK="https://127.0.0.1:$port/$PEER_USER/contacts/addressbook/"
      peer_wait_up "$PEER_BOOK"
      ;;
    *) echo "unknown peer $peer (radicale or xandikos)" >&2; return 1 ;;
  esac
}

# peer_wait_up URL: waits for an authenticated answer to PROPFIND Depth 0.
peer_wait_up() {
  local code
  for _ in $(seq 1 1000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -k -u "$PEER_USER:$PEER_PASSWORD" -X PROPFIND -H 'Depth: 0' "$1" || true)
    case $code in 207|404) return 0 ;; esac
    sleep 0.05
  done
  echo "server at $1 did not come up" >&2; return 1
}
