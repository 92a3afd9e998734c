# Shared by the interop scripts that need a plain-HTTP kartei on loopback (sourced, not run).
#
#   start_plain_kartei USER [EXTRA_TOML]
#
# Writes a config in a new temporary directory ($work) with a free loopback port ($port, $base), creates
# USER with the CLI ($password), starts `kartei serve` ($server, log in $work/server.log), waits until it
# answers, and stops it and removes $work when the calling script exits. Uses $KARTEI_BIN.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_plain_kartei() {
  local user=$1 extra=${2:-}
  [ -x "$KARTEI_BIN" ] || { echo "no kartei binary at $KARTEI_BIN (cargo build first)"; exit 1; }
  work=$(mktemp -d)
  port=$(free_port)
  base="http://127.0.0.1:$port"
  printf '[server]\nlisten = "127.0.0.1:%s"\n[tls]\nmode = "off"\n[storage]\ndata_dir = "%s"\n%s\n' \
    "$port" "$work/data" "$extra" >"$work/kartei.toml"
  password=$("$KARTEI_BIN" --config "$work/kartei.toml" user add --username "$user" --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')
  RUST_LOG=${RUST_LOG:-warn} "$KARTEI_BIN" --config "$work/kartei.toml" serve >"$work/server.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
  for _ in $(seq 100); do curl -s -o /dev/null "$base/" && return 0; sleep 0.1; done
  echo "kartei did not start:"; tail -20 "$work/server.log"; exit 1
}
