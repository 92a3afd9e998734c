#!/usr/bin/env bash
# Runs the litmus WebDAV suite (Debian package `litmus`) against kartei's file area /dav/files/{user}/.
# The basic, copymove, props and http groups must pass completely; locks is skipped by litmus itself because
# kartei does not advertise class 2. Usage: tests/interop/litmus.sh [path-to-kartei-binary]
set -euo pipefail
KARTEI_BIN=${1:-${KARTEI_BIN:-target/debug/kartei}}
command -v litmus >/dev/null || { echo "litmus is not installed (apt-get install litmus)"; exit 1; }

# shellcheck source=tests/interop/lib.sh
source "$(dirname "$0")/lib.sh"
start_plain_kartei litmus

timeout 300 litmus -k "$base/dav/files/litmus/" litmus "$password" | tee "$work/litmus.out"

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
