#!/usr/bin/env bash
# delivery.sh - the end-to-end benchmark: SMTP in to a file in Maildir/new,
# `sqmail up` and Postfix side by side on this machine, one after the other
# (they share the CPUs and the disk), same load, both durable (fsync before
# 250, fsync of the delivered file).
#
#   conformance/bench/delivery.sh [N] [CONCURRENCY] [REPS] [AS]
#   KEEP=1 conformance/bench/delivery.sh ...
#
# Defaults: 5000 messages of 2048 body bytes over 10 sessions, 3 runs each
# (bench_mta.py prints medians and ranges, and the whole machine's CPU per
# message). AS is the user `sqmail up` runs as: `bench` (default; deliveries
# run in-process as that user, the embedded default) or `root` (deliveries
# fork and drop to the mailbox owner, as a root-run qmail site does).
# Run as root: Postfix is configured by setup_postfix.sh from the Debian
# package. No timing is asserted anywhere.
#
# DIR=PATH puts sqmail's home there instead of /tmp (Postfix keeps its
# spool and ~bench/Maildir): to measure on another filesystem, mount it
# there and bind-mount it over /var/spool/postfix and /home/bench too.
#
# KEEP=1 deletes nothing while it measures: bench_mta.py moves delivered
# files aside (--keep-delivered) and sqmail gets a new home instead of the
# old one being removed. On ext4 without a journal every file created in
# the minutes after a deletion pays for a scan past the freed inodes, for
# both MTAs alike; KEEP=1 measures them without that. It leaves its homes
# and files behind (a line on stderr says where): delete them, then wait six
# minutes before the next run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
N=${1:-5000} CONC=${2:-10} REPS=${3:-3} AS=${4:-bench}
SQ_PORT=2527 PF_PORT=2525
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

echo "== building sqmail (release)" >&2
(cd "$root" && cargo build --release -q -p sqmail)
id bench >/dev/null 2>&1 || useradd -m -s /usr/sbin/nologin bench
bin=/tmp/sqmail-bench-bin
install -m 0755 "$root/target/release/sqmail" "$bin"

# setpriv execs in place (runuser forks and, killed, leaves its child
# running).
as_user=()
[ "$AS" = root ] || as_user=(setpriv --reuid="$AS" --regid="$AS" --init-groups)

echo "== sqmail up (as $AS)" >&2
postfix stop >/dev/null 2>&1 || true
if ss -Hltn "sport = :$SQ_PORT" | grep -q .; then
  echo "delivery.sh: 127.0.0.1:$SQ_PORT is taken (a sqmail left running?)" >&2
  exit 1
fi
KEEP=${KEEP:-} DIR=${DIR:-/tmp}
if [ -n "$KEEP" ]; then
  home=$DIR/sqmail-bench-home-$(date +%s)
  keep=(--keep-delivered)
else
  home=$DIR/sqmail-bench-home
  rm -rf "$home"
  keep=()
fi
mkdir -p "$home"; chown "$AS" "$home"
# A simple command, not a shell function: in the background a function
# runs in a subshell of its own, `$!` would be that shell, and the TERM
# below would leave sqmail running (and measured beside Postfix).
"${as_user[@]}" "$bin" up --home "$home" --smtp 127.0.0.1:$SQ_PORT --submission none --smtps none \
  --pop3 none --pop3s none --qmtp none --qmqp none --qmtps none >/tmp/sqmail-bench.log 2>&1 &
up=$!
for _ in $(seq 100); do
  grep -q listening /tmp/sqmail-bench.log 2>/dev/null && break; sleep 0.1
done
if ! kill -0 "$up" 2>/dev/null; then
  cat /tmp/sqmail-bench.log >&2
  exit 1
fi
echo | "${as_user[@]}" "$bin" user add --home "$home" bench@bench.test >/dev/null
sleep 2  # up rereads locals/virtualdomains once a second
sq=$(python3 "$here/bench_mta.py" --name sqmail --port $SQ_PORT --n "$N" --conc "$CONC" --reps "$REPS" "${keep[@]}" \
  --maildir "$home/mailboxes/bench@bench.test/Maildir" | tee /dev/stderr | grep '^| sqmail |' | tail -1)
kill -TERM "$up"; wait "$up" || true
if ss -Hltn "sport = :$SQ_PORT" | grep -q .; then
  echo "delivery.sh: sqmail did not stop on SIGTERM" >&2
  exit 1
fi

echo "== postfix" >&2
PORT=$PF_PORT "$here/setup_postfix.sh" >/dev/null
postfix start >/dev/null 2>&1
sleep 2
pf=$(python3 "$here/bench_mta.py" --name postfix --port $PF_PORT --n "$N" --conc "$CONC" --reps "$REPS" "${keep[@]}" \
  --maildir ~bench/Maildir | tee /dev/stderr | grep '^| postfix |' | tail -1)
postfix stop >/dev/null 2>&1

echo "sqmail:  $sq" >&2
echo "postfix: $pf" >&2
if [ -n "$KEEP" ]; then
  echo "KEEP: left $home and ~bench/delivered-*: delete them, then wait six minutes" >&2
fi
# bench_mta.py's table row: | name | N | size | conc | accept (range) | e2e (range) | cpu (range) |
python3 - "$sq" "$pf" <<'PY'
import sys
def parse(row):
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    return float(cells[5].split()[0]), float(cells[6].split()[0])
(r_sq, c_sq), (r_pf, c_pf) = parse(sys.argv[1]), parse(sys.argv[2])
print(f"RESULT e2e_sqmail={r_sq:.0f} e2e_postfix={r_pf:.0f} ratio={r_sq / r_pf:.2f} "
      f"cpu_ms_sqmail={c_sq:.2f} cpu_ms_postfix={c_pf:.2f}")
PY
