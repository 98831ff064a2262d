#!/usr/bin/env bash
# fuzz/smoke.sh: every target of `cargo fuzz list` for a few seconds, on
# the stable toolchain (no sanitizer), failing on the first crash, panic,
# timeout or out-of-memory. CI runs it after the tests (.ci/run).
#
#   fuzz/smoke.sh                    # FUZZ_SECONDS per target, see below
#   FUZZ_SECONDS=60 fuzz/smoke.sh    # longer
#
# FUZZ_SECONDS defaults to FUZZ_BUDGET (150 s) shared among the targets,
# at least 5 s each, so the whole run (cold build ~45-60 s on 2 cores
# included) stays under 4 minutes as targets are added.
#
# Stable is enough: with `--sanitizer none` cargo-fuzz passes only stable
# rustc flags (`--cfg fuzzing`, `-Cpasses=sancov-module`, `-Cllvm-args=...`),
# so neither nightly nor RUSTC_BOOTSTRAP is needed.
set -euo pipefail
cd "$(dirname "$0")"

# 0.13.2 builds on stable 1.95 (its `--locked` tree); any installed
# cargo-fuzz is used as is.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

python3 gen-corpus.py >/dev/null

flags=(-O --sanitizer none)
cargo fuzz build "${flags[@]}"

mapfile -t targets < <(cargo fuzz list)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz/smoke.sh: cargo fuzz list names no target" >&2
  exit 1
fi
budget=${FUZZ_BUDGET:-150}
secs=${FUZZ_SECONDS:-$(( budget / ${#targets[@]} > 5 ? budget / ${#targets[@]} : 5 ))}
echo "fuzz smoke: ${#targets[@]} targets, ${secs} s each"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
for t in "${targets[@]}"; do
  log="$logs/$t.log"
  # -timeout: one input taking longer is a hang (a failure); the whole
  # run is bounded by -max_total_time.
  if ! cargo fuzz run "${flags[@]}" "$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "FUZZ SMOKE FAILED: target $t; artifact: ${artifact:-none written (see output above)}" >&2
    if [ -n "$artifact" ]; then
      echo "replay: cd fuzz && cargo fuzz run ${flags[*]} $t $artifact" >&2
    fi
    exit 1
  fi
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  printf '%-16s %10s execs/s %12s runs\n' "$t" "${rate:-?}" "${runs:-?}"
done
echo "fuzz smoke: all ${#targets[@]} targets ran ${secs} s without a crash"
