#!/usr/bin/env bash
# remote.sh - the remote-delivery benchmark: messages per second from the
# queue to Postfix's smtp-sink over loopback, `sqmail send` and Postfix
# side by side on this machine (one after the other), each with and
# without connection reuse, same load (N queued messages of 2 KiB, one
# recipient each, one destination), both at 20 parallel deliveries.
#
#   conformance/bench/remote.sh [N] [REPS]
#
# The queue is filled first with delivery held (sqmail: `send` not running;
# Postfix: `defer_transports = smtp`), then released; the time is from the
# release to an empty queue, and the CPU is the whole machine's over that
# time (/proc/stat), per message. Run as root on an otherwise idle machine;
# needs Debian's postfix (for smtp-sink and the comparison). No timing is
# asserted anywhere.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
N=${1:-2000} REPS=${2:-3}
SINK=2526 CONC=20
body=$(head -c 1536 /dev/zero | tr '\0' 'x' | fold -w 76)

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
ticks=$(getconf CLK_TCK)
# Prints "msgs/s cpu-ms-per-message" for a drain of N messages that
# `release` starts and `queued` (a count) tracks.
measure() {
  local release=$1 queued=$2 t0 c0 t1 c1
  c0=$(busy); t0=$(date +%s.%N)
  $release
  while [ "$($queued)" -gt 0 ]; do sleep 0.05; done
  t1=$(date +%s.%N); c1=$(busy)
  python3 -c "import sys; n,t,c=$N,$t1-$t0,($c1-$c0)/$ticks; print(f'{n/t:.0f} {c*1000/n:.2f}')"
}

echo "== building sqmail (release)" >&2
(cd "$root" && cargo build --release -q -p sqmail)
bin=/tmp/sqmail-bench-bin
install -m 0755 "$root/target/release/sqmail" "$bin"
PORT=2525 "$here/setup_postfix.sh" >/dev/null
postfix stop >/dev/null 2>&1 || true

smtp-sink -u postfix 127.0.0.1:$SINK 1000 &
sink=$!
trap 'kill $sink 2>/dev/null || true; postfix stop >/dev/null 2>&1 || true' EXIT
sleep 0.5

home=/tmp/sqmail-bench-remote
sq_queued() { find "$home/queue/mess" -type f | wc -l; }
sq_release() { "$bin" send --home "$home" $SQ_FLAGS >/tmp/sqmail-bench-remote.log 2>&1 & sq_pid=$!; }
sqmail_run() {
  rm -rf "$home"
  "$bin" setup --home "$home" >/dev/null
  echo "sink.test:127.0.0.1:$SINK" >"$home/control/smtproutes"
  echo $CONC >"$home/control/concurrencyremote"
  for i in $(seq "$N"); do
    printf 'Subject: %s\n\n%s\n' "$i" "$body" | "$bin" inject --home "$home" -f bench@bench.test "r$i@sink.test"
  done
  measure sq_release sq_queued
  kill -TERM "$sq_pid"; wait "$sq_pid" || true
}

pf_spool=/var/spool/postfix
pf_queued() { find $pf_spool/incoming $pf_spool/active $pf_spool/deferred $pf_spool/maildrop -type f | wc -l; }
pf_release() { postconf -e defer_transports= ; postfix reload >/dev/null 2>&1; postqueue -f; }
postfix_run() {
  postconf -e "relayhost=[127.0.0.1]:$SINK" "default_destination_concurrency_limit=$CONC" \
    "smtp_connection_cache_on_demand=$1" defer_transports=smtp
  postfix start >/dev/null 2>&1 || postfix reload >/dev/null 2>&1
  postsuper -d ALL >/dev/null 2>&1 || true
  for i in $(seq "$N"); do
    printf 'Subject: %s\n\n%s\n' "$i" "$body" | sendmail -f bench@bench.test "r$i@sink.test"
  done
  while [ "$(find $pf_spool/maildrop $pf_spool/incoming -type f | wc -l)" -gt 0 ]; do sleep 0.1; done
  measure pf_release pf_queued
  postfix stop >/dev/null 2>&1
}

declare -A result
for rep in $(seq "$REPS"); do
  for reuse in yes no; do
    if [ $reuse = yes ]; then SQ_FLAGS=""; else SQ_FLAGS="--reuse-for 0"; fi
    result[sqmail-$reuse]+="$(sqmail_run)|"
    result[postfix-$reuse]+="$(postfix_run $reuse)|"
    echo "rep $rep reuse=$reuse: sqmail ${result[sqmail-$reuse]} postfix ${result[postfix-$reuse]}" >&2
  done
done

python3 - "$N" "${result[sqmail-yes]}" "${result[postfix-yes]}" "${result[sqmail-no]}" "${result[postfix-no]}" <<'PY'
import statistics, sys
n = sys.argv[1]
def runs(s):
    rows = [r.split() for r in s.strip("|").split("|")]
    return [float(r[0]) for r in rows], [float(r[1]) for r in rows]
print(f"| reuse | system | msgs/s (median of runs) | machine CPU per message |")
print("| --- | --- | --- | --- |")
for reuse, sq, pf in (("yes", sys.argv[2], sys.argv[3]), ("no", sys.argv[4], sys.argv[5])):
    (sr, sc), (pr, pc) = runs(sq), runs(pf)
    for name, r, c in (("sqmail send", sr, sc), ("Postfix 3.7", pr, pc)):
        print(f"| {reuse} | {name} | {statistics.median(r):.0f} ({min(r):.0f}-{max(r):.0f}) | "
              f"{statistics.median(c):.2f} ms |")
    print(f"| {reuse} | ratio | **{statistics.median(sr) / statistics.median(pr):.2f}x** | "
          f"{statistics.median(pc) / statistics.median(sc):.1f}x less |")
print(f"RESULT n={n}")
PY
