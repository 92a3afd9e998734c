#!/usr/bin/env bash
# Runs the litmus WebDAV suite (Debian package `litmus`) against kartei's file area /dav/files/{user}/.
# The basic, copymove, props and http groups must pass completely; locks is skipped by litmus itself because
# kartei does not advertise class 2. Usage: tests/interop/litmus.sh [path-to-kartei-binary]
set -euo pipefail
KARTEI_BIN=${1:-${KARTEI_BIN:-target/debug/kartei}}
command -v litmus >/dev/null || { echo "litmus is not installed (apt-get install litmus)"; exit 1; }

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/kartei.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
[tls]
mode = "off"
[storage]
data_dir = "$work/data"
CONF
password=$("$KARTEI_BIN" --config "$work/kartei.toml" user add --username litmus --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')
"$KARTEI_BIN" --config "$work/kartei.toml" serve >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done

timeout 300 litmus -k "http://127.0.0.1:$port/dav/files/litmus/" litmus "$password" | tee "$work/litmus.out"

passed=0; failed=0
for group in basic copymove props http; do
  line=$(grep "summary for \`$group'" "$work/litmus.out" || true)
  if [[ "$line" =~ of\ ([0-9]+)\ tests\ run:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
    passed=$((passed + BASH_REMATCH[2])); failed=$((failed + BASH_REMATCH[3]))
    echo "litmus $group: ${BASH_REMATCH[2]} of ${BASH_REMATCH[1]} passed"
  else
    echo "litmus $group: no summary"; failed=$((failed + 1))
  fi
done
echo "litmus: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
