#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time from its seed corpus (fuzz/corpus/<target>/) and fails
# on the first crash, panic, timeout or out-of-memory. libFuzzer leaves the offending input in
# fuzz/artifacts/<target>/; once the bug is fixed, copy it into fuzz/corpus/<target>/ so it is replayed.
#
#   FUZZ_SECONDS=20 (default) per target     FUZZ_TARGETS="router vcard" to run some
#
# cargo-fuzz needs nightly rustc flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
# New inputs the fuzzer finds go to a scratch directory, so the committed corpus stays small and stable.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
# What `cargo fuzz run` sets (Rust's ASan builds report false ODR violations).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"
seconds="${FUZZ_SECONDS:-20}"

if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi

read -r -a targets <<< "${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
build_start=$(date +%s)
if [ -n "${FUZZ_TARGETS:-}" ]; then
  for t in "${targets[@]}"; do cargo fuzz build --release "$t"; done
else
  cargo fuzz build --release
fi
echo "fuzz: built ${#targets[@]} targets in $(( $(date +%s) - build_start )) s"
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "corpus/$t" "artifacts/$t"
  log="$scratch/$t.log"
  # The binary directly: `cargo fuzz run` would rebuild first, once per target.
  if "$bin/$t" "$scratch/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz: $t ok, $execs inputs in ${seconds} s"
  else
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/):"
    grep -E -A25 "panicked|ERROR: libFuzzer|SUMMARY|deadly signal" "$log" | head -60 || tail -40 "$log"
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
