#!/usr/bin/env bash
# footprint.sh: binary size and idle memory of both builds of `sqmail`
# (mio, the default, and smol), printed as a markdown table.
#
#   conformance/bench/footprint.sh          # from anywhere in the repo
#
# For each build: the release binary's size, and that of a stripped copy;
# then `sqmail up` on a fresh home with SMTP on a free loopback port and
# every other service off, its memory (VmRSS and Pss from
# /proc/PID/smaps_rollup, summed over it and its children) after 2 s
# idle, and again with 100 idle SMTP connections open (each greeted,
# from several loopback addresses: at most 50 per client IP are served).
set -euo pipefail
cd "$(dirname "$0")/../.."
CONNS=${CONNS:-100}
work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p sqmail
cp target/release/sqmail "$work/sqmail-mio"
cargo build --release -q -p sqmail --no-default-features --features smol
cp target/release/sqmail "$work/sqmail-smol"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Sum of VmRSS and Pss (KiB) over PID and its descendants.
mem() {
  python3 - "$1" <<'EOF'
import os, sys
root = int(sys.argv[1])
kids = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        kids.setdefault(ppid, []).append(int(p))
todo, pids = [root], []
while todo:
    p = todo.pop()
    pids.append(p)
    todo.extend(kids.get(p, []))
rss = pss = 0
for p in pids:
    try:
        for line in open(f"/proc/{p}/smaps_rollup"):
            k, v = line.split(":", 1)
            if k == "Rss":
                rss += int(v.split()[0])
            elif k == "Pss":
                pss += int(v.split()[0])
    except OSError:
        pass
print(rss, pss, len(pids))
EOF
}

rows=()
for build in mio smol; do
  bin="$work/sqmail-$build"
  size=$(stat -c %s "$bin")
  cp "$bin" "$bin.stripped"
  strip "$bin.stripped"
  stripped=$(stat -c %s "$bin.stripped")
  port=$(free_port)
  home="$work/home-$build"
  off=()
  for s in submission smtps pop3 pop3s qmtp qmqp qmtps; do off+=("--$s" none); done
  "$bin" up --home "$home" --smtp "127.0.0.1:$port" "${off[@]}" >"$work/up-$build.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    if python3 -c "import socket,sys; s=socket.create_connection(('127.0.0.1',$port),1); s.settimeout(2); sys.exit(0 if s.recv(4).startswith(b'220') else 1)" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  sleep 2
  read -r rss0 pss0 nproc0 < <(mem "$pid")
  # Hold CONNS greeted connections open, measure, then close them.
  fifo="$work/ready-$build"
  mkfifo "$fifo"
  python3 - "$port" "$CONNS" "$fifo" <<'EOF' &
import socket, sys, time
port, n, fifo = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
for i in range(n):
    # 40 per source address: smtpd serves at most 50 per client IP.
    src = (f"127.0.0.{2 + i // 40}", 0)
    s = socket.create_connection(("127.0.0.1", port), 5, source_address=src)
    s.settimeout(5)
    if not s.recv(512).startswith(b"220"):
        sys.exit("no greeting")
    conns.append(s)
open(fifo, "w").write("ready\n")
time.sleep(30)
EOF
  holder=$!
  read -r _ <"$fifo"
  sleep 1
  read -r rss1 pss1 nproc1 < <(mem "$pid")
  kill "$holder" 2>/dev/null || true
  wait "$holder" 2>/dev/null || true
  kill -TERM "$pid"
  wait "$pid" || true
  pid=
  per=$(( (pss1 - pss0) * 1024 / CONNS ))
  rows+=("| $build | $size | $stripped | $rss0 / $pss0 | $rss1 / $pss1 | $per |")
done

echo "| build | binary bytes | stripped bytes | idle RSS / PSS KiB | with $CONNS idle SMTP connections RSS / PSS KiB | PSS bytes per connection |"
echo "| --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
