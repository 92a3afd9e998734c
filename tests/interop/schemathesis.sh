#!/usr/bin/env bash
# Property-based API fuzzing with schemathesis (PyPI) against kartei's own OpenAPI document: requests generated
# from every operation's parameters and bodies, valid and invalid, must never get a 5xx, and the server log
# must show no server error. Seeded, so a run repeats; SCHEMATHESIS_EXAMPLES (default 100) per operation.
# Usage: tests/interop/schemathesis.sh [path-to-kartei-binary]   (KARTEI_BIN is honoured too)
set -euo pipefail
KARTEI_BIN=${1:-${KARTEI_BIN:-target/debug/kartei}}
cd "$(dirname "$0")/../.."
case "$KARTEI_BIN" in /*) ;; *) [ -x "$OLDPWD/$KARTEI_BIN" ] && KARTEI_BIN="$OLDPWD/$KARTEI_BIN" ;; esac
command -v schemathesis >/dev/null || { echo "schemathesis is not installed (python3 -m pip install schemathesis)"; exit 1; }
started=$(date +%s)

# Plain HTTP on loopback (TLS has its own tests); the login throttle off, since the fuzzer sends many
# requests without or with broken credentials on purpose.
# shellcheck source=tests/interop/lib.sh
source tests/interop/lib.sh
start_plain_kartei fuzz "$(printf '[auth]\nthrottle_failures = 1000000')"
# A few contacts, so that searches, filters and exports have something to work on.
for name in "Jürgen Müller" "Anna Schmidt" "Zoë O'Brien"; do
  curl -s -o /dev/null -u "fuzz:$password" -H 'Content-Type: application/json' \
    -d "{\"fn\": \"$name\", \"emails\": [{\"value\": \"$(echo "$name" | tr -cd 'a-z')@example.org\"}]}" \
    "$base/api/v1/books/contacts/contacts"
done

status=0
# From the scratch directory: schemathesis keeps its own state (.schemathesis/) in the working directory.
(cd "$work" && schemathesis run "$base/api/v1/openapi.json" --auth "fuzz:$password" --checks not_a_server_error \
  --phases examples,fuzzing --max-examples "${SCHEMATHESIS_EXAMPLES:-100}" --seed 20261123 -w 2 \
  --no-color >"$work/schemathesis.log" 2>&1) || status=$?
server_errors=$(grep -c -E "status=5[0-9][0-9]|panicked" "$work/server.log" || true)
generated=$(grep -o -E '[0-9]+ generated' "$work/schemathesis.log" | head -1 || true)
if [ "$status" -ne 0 ] || [ "$server_errors" -ne 0 ]; then
  echo "schemathesis: FAILED (exit $status, $server_errors server errors in the log)"
  sed -n '/FAILURES/,$p' "$work/schemathesis.log" | head -80
  grep -E "status=5[0-9][0-9]|panicked" "$work/server.log" | head -20 || true
  exit 1
fi
echo "schemathesis: ${generated:-?} requests from the OpenAPI document, 0 server errors, $(( $(date +%s) - started ))s"
