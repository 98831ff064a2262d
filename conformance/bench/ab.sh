#!/usr/bin/env bash
# ab.sh - compare two sqmail binaries end to end, in alternating runs.
#
#   conformance/bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [N]
#
# On a VM the machine's speed drifts by a quarter within an hour (files
# pile up, deletions make ext4 scan freed inodes), so two sets of runs
# taken one after the other compare the hour, not the binaries. This runs
# OLD, NEW, OLD, NEW, ... (ROUNDS pairs, default 4), each `sqmail up` on a
# new home as the `bench` user, one bench_mta.py run of N messages (default
# 5000, 2 KiB, 10 sessions) with the delivered files moved aside rather
# than deleted, and prints each binary's median e2e rate and CPU per
# message with every run's figure. Run as root; no timing is asserted.
# It leaves its homes in /tmp/sqmail-ab-* (delete them, then wait six
# minutes before measuring again); DIR=PATH puts them in PATH instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { sed -n '2,15p' "$0"; exit 2; }
old=$1 new=$2 ROUNDS=${3:-4} N=${4:-5000}
PORT=2527
id bench >/dev/null 2>&1 || useradd -m -s /usr/sbin/nologin bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT

one_run() { # label binary
  local bin=/tmp/sqmail-ab-bin home log=/tmp/sqmail-ab.log
  if ss -Hltn "sport = :$PORT" | grep -q .; then
    echo "ab.sh: 127.0.0.1:$PORT is taken" >&2
    exit 1
  fi
  install -m 0755 "$2" "$bin"
  home=$(mktemp -d "${DIR:-/tmp}/sqmail-ab-XXXXXX")
  chown bench "$home"
  # A simple command, so that `$!` is sqmail itself (setpriv execs).
  setpriv --reuid=bench --regid=bench --init-groups "$bin" up --home "$home" \
    --smtp 127.0.0.1:$PORT --submission none --smtps none --pop3 none --pop3s none \
    --qmtp none --qmqp none --qmtps none >"$log" 2>&1 &
  local up=$!
  for _ in $(seq 100); do grep -q listening "$log" 2>/dev/null && break; sleep 0.1; done
  echo | setpriv --reuid=bench --regid=bench --init-groups "$bin" user add --home "$home" \
    bench@bench.test >/dev/null
  sleep 2 # up rereads locals/virtualdomains once a second
  python3 "$here/bench_mta.py" --name "$1" --port $PORT --n "$N" --conc 10 --reps 1 \
    --settle 1 --keep-delivered --maildir "$home/mailboxes/bench@bench.test/Maildir" |
    grep "^| $1 |" | tail -1 >>"$out"
  kill -TERM "$up"
  wait "$up" || true
}

for _ in $(seq "$ROUNDS"); do
  one_run old "$old"
  one_run new "$new"
done
python3 - "$out" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    e2e, cpu = float(cells[5].split()[0]), float(cells[6].split()[0])
    runs.setdefault(cells[0], ([], []))
    runs[cells[0]][0].append(e2e)
    runs[cells[0]][1].append(cpu)
for name in ("old", "new"):
    e2e, cpu = runs.get(name, ([], []))
    if not e2e:
        continue
    print(f"{name}: e2e {statistics.median(e2e):.0f} msgs/s ({' '.join(f'{x:.0f}' for x in e2e)}), "
          f"cpu {statistics.median(cpu):.3f} ms/msg ({' '.join(f'{x:.2f}' for x in cpu)})")
PY
