#!/usr/bin/env bash
# Build and run Herald's fuzz targets (fuzz/, cargo-fuzz + libFuzzer with
# AddressSanitizer and debug assertions) for a given time each, then print
# per target: executions, coverage (libFuzzer's final cov/ft) and crashes.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     # default: 60 s, every target
#
# Exits non-zero when any target crashes (panic, failed assertion, sanitizer
# report, timeout or out-of-memory) or cannot be built. A crash's input is in
# fuzz/artifacts/<target>/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# (from fuzz/). Seeds are committed in fuzz/corpus/<target>/; what libFuzzer
# adds while running goes to fuzz/target/corpus/<target>/ (not committed,
# reused by later runs on the same machine).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, sanitizer
# coverage); the stable toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1

seconds="${1:-60}"
shift || true
case "$seconds" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2; exit 2 ;;
esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz into ~/.cargo/bin (once)"
  cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "==> building fuzz targets: ${targets[*]}"
cargo fuzz build

dict_for() {
  case "$1" in
    stomp_codec) echo dict/stomp.dict ;;
    *) echo dict/json.dict ;;
  esac
}

mkdir -p target/fuzz-logs
summary=()
failed=0
for t in "${targets[@]}"; do
  work="target/corpus/$t"
  log="target/fuzz-logs/$t.log"
  mkdir -p "$work" "corpus/$t"
  echo "==> $t for ${seconds}s (log: fuzz/$log)"
  status=0
  # The first corpus directory receives new inputs; the committed seeds stay as they are.
  cargo fuzz run "$t" "$work" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -dict="$(dict_for "$t")" -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  stats=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$stats")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$stats")
  crashes=$(grep -c 'Test unit written to' "$log" || true)
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    # Not a crash libFuzzer recorded: a build or harness failure.
    tail -n 30 "$log" >&2
    echo "error: $t exited with status $status" >&2
    crashes="error"
  fi
  if [ "$crashes" != 0 ]; then
    failed=1
    grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|Test unit written to' "$log" >&2 || true
  fi
  summary+=("$(printf '%-15s %8s %12s %7s %7s %8s' "$t" "${seconds}s" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes")")
done

echo
printf '%-15s %8s %12s %7s %7s %8s\n' target time executions cov ft crashes
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "error: fuzzing found crashes (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
