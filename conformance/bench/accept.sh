#!/usr/bin/env bash
# accept.sh - the accept-rate benchmark: `sqmail smtpd --listen` and Postfix
# side by side on this machine, one after the other (they share the CPUs
# and the disk), same load, same durability (250 only after fsync).
#
#   conformance/bench/accept.sh [N] [CONCURRENCY] [SIZE] [REPS] [IDLE]
#
# Defaults: 5000 messages of 2048 body bytes over 50 sessions, a warm-up
# run and 3 measured runs each (medians), then 1000 idle connections for
# the memory figure. Each run starts with the disk quiet and, for Postfix,
# its queue delivered, so both are measured accepting only. Uses Postfix's
# smtp-source as the client when it is installed (run as root: Postfix is
# configured by setup_postfix.sh, from the Debian package). Prints a table
# and a final `RESULT ...` line with the ratios. No timing is asserted.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
N=${1:-5000} CONC=${2:-50} SIZE=${3:-2048} REPS=${4:-3} IDLE=${5:-1000}
SQ_PORT=2527 PF_PORT=2525

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

# Waits until nothing from an earlier run is still being written or
# delivered, so each run measures accepting only (Postfix delivers what
# it accepted in the background; sqmail has no delivery yet).
quiesce() {
  if [ "${1:-}" = postfix ]; then
    for _ in $(seq 300); do
      postqueue -p 2>/dev/null | grep -q "Mail queue is empty" && break
      sleep 1
    done
  fi
  sync; sleep 1
}

# One unmeasured warm-up run (fresh queue directories and block groups are
# slow at first), then REPS runs; prints "rate cpu_ms" medians.
load() {
  local port=$1 system=$2 rates=() cpus=() out
  quiesce "$system"
  python3 "$here/smtp_load.py" 127.0.0.1 "$port" "$N" "$CONC" "$SIZE" --to bench@bench.test >/dev/null
  for _ in $(seq "$REPS"); do
    quiesce "$system"
    out=$(python3 "$here/smtp_load.py" 127.0.0.1 "$port" "$N" "$CONC" "$SIZE" --to bench@bench.test | tail -1)
    echo "    $out" >&2
    rates+=("$(echo "$out" | field rate)")
    cpus+=("$(echo "$out" | field server_cpu_ms_per_msg)")
  done
  echo "$(printf '%s\n' "${rates[@]}" | median) $(printf '%s\n' "${cpus[@]}" | median)"
}

idle() { # port, then idle_conns.py's process selection
  local port=$1; shift
  python3 "$here/idle_conns.py" 127.0.0.1 "$port" "$IDLE" "$@" --hold 2 | tail -1 | field pss_kib_per_conn
}

echo "== building sqmail (release)" >&2
(cd "$root" && cargo build --release -q -p sqmail)
bin=$root/target/release/sqmail
home=$(mktemp -d)/sqmail-home
"$bin" setup --home "$home" >/dev/null
echo bench.test > "$home/control/rcpthosts"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$bin" smtpd --home "$home" --listen 127.0.0.1:$SQ_PORT --max-connections 20000 --max-per-ip 20000 2>/dev/null &
sq_pid=$!
trap 'kill $sq_pid 2>/dev/null || true' EXIT
sleep 0.5
echo "== sqmail: $N msgs x $SIZE B at concurrency $CONC" >&2
read -r sq_rate sq_cpu < <(load $SQ_PORT sqmail)
sq_pss=$(idle $SQ_PORT --pid $sq_pid)
kill $sq_pid; wait $sq_pid 2>/dev/null || true
rm -rf "$(dirname "$home")"

pf_rate=- pf_cpu=- pf_pss=-
if command -v postfix >/dev/null || [ -x /usr/sbin/postfix ]; then
  echo "== postfix: same load" >&2
  PORT=$PF_PORT "$here/setup_postfix.sh" >/dev/null
  # A fresh start, as sqmail gets a fresh home: an empty queue and Maildir.
  postsuper -d ALL >/dev/null 2>&1 || true
  find ~bench/Maildir -type f -delete 2>/dev/null || true
  postfix start >/dev/null 2>&1 || postfix reload >/dev/null 2>&1
  sleep 1
  read -r pf_rate pf_cpu < <(load $PF_PORT postfix)
  pf_pss=$(idle $PF_PORT --name 'master|smtpd|qmgr|pickup|anvil|cleanup|trivial-rewrite|postlogd|proxymap')
  postfix stop >/dev/null 2>&1 || true
else
  echo "== postfix is not installed: no side-by-side figures" >&2
fi

ratio() { if [ "$2" = - ]; then echo -; else awk "BEGIN {printf \"%.2f\", $1 / $2}"; fi; }
printf '\n%-10s %14s %14s %20s\n' system "accepted/s" "CPU ms/msg" "PSS KiB/idle conn"
printf '%-10s %14s %14s %20s\n' sqmail "$sq_rate" "$sq_cpu" "$sq_pss" postfix "$pf_rate" "$pf_cpu" "$pf_pss"
echo "RESULT n=$N conc=$CONC size=$SIZE sqmail_rate=$sq_rate postfix_rate=$pf_rate rate_ratio=$(ratio "$sq_rate" "$pf_rate") sqmail_cpu_ms=$sq_cpu postfix_cpu_ms=$pf_cpu sqmail_pss_kib=$sq_pss postfix_pss_kib=$pf_pss"
