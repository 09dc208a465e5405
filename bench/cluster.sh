#!/usr/bin/env bash
# journalgate cluster benchmark: SMTP ingest of ~20 KB journal reports (C=1 and C=32) and
# POP3 collection (download + delete), through one gateway node and through two gateway
# nodes on a 3-node Garage cluster (replication factor 3, data and metadata fsync on, no
# compression: the objects are sealed),
# beside one node on the local back-end and Postfix + Dovecot, all in one run on loopback.
#
#   bench/cluster.sh            full run: 2,000 reports per case
#   bench/cluster.sh --quick    sanity run: 500 reports per case
#
# Systems (the archive is off on every journalgate node: this measures the gateway path):
#  L.  one journalgate node, [storage] backend = "local" (fsync'd spool, group commit)
#  G1. one journalgate node, [storage] backend = "s3" on the Garage cluster
#  G2. two journalgate nodes on the same cluster, each talking to a different Garage node;
#      the load is split in two halves sent at once, one to each node (C=32: 16 + 16
#      connections; C=1: one connection per node), as two MX hosts would see it
#  P.  Postfix -> LMTP -> Dovecot Maildir (mail_fsync = always), POP3 from Dovecot
# Ingest msg/s: from the first connection to the last 250 (for P, until the last message
# is in the Maildir). Collection: one POP3 session (implicit TLS) that RETRs and DELEs
# every message of the case (G2: through the second node, which took only half of them).
# CPU per message: the gateway processes' CPU (utime+stime, all threads) and, separately,
# the three Garage processes' (the store's share), from the start of a case to its end,
# divided by the messages. Everything runs on one 2-core machine, so the nodes and the
# store share two cores: the per-node cost is the figure to scale by, not the wall rate.
#
# Needs root (apt install, postfix/dovecot privilege drop) and garage (tests/run.sh
# installs it). Switches: --quick, --no-install, --no-build, --keep. BENCH_BUDGET_SECS
# (default 1500) bounds the run. Prints a markdown table and writes it to
# bench/results/cluster-<date>[-quick].md.
set -euo pipefail

QUICK=0 INSTALL=1 BUILD=1 KEEP=0 LOOPFS=1
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --rootfs) LOOPFS=0 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then N=500 CASE_TIMEOUT=300; else N=2000 CASE_TIMEOUT=900; fi
CONCS="1 32"
REPORT_SIZE=20000

. "$(dirname "$0")/lib.sh"
bench_init cluster-bench 1500
[ "$(id -u)" = 0 ] || { echo "bench/cluster.sh needs root" >&2; exit 1; }
GARAGE_BIN=$(command -v garage || echo "$HOME/.cargo/bin/garage")
[ -x "$GARAGE_BIN" ] || { echo "garage is not installed (tests/run.sh installs it)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/jg-cluster.XXXXXX)
if scratch_fs_possible; then
  mount_scratch_fs 12
  FS_NOTE="a fresh journaled ext4 on $LOOP_DEV (direct I/O loop over $LOOP_IMG)"
else
  FS_NOTE=$(rootfs_note)
fi
chmod 755 "$WORK"
mkdir -p "$WORK/res"
CMDS="$WORK/commands.txt"; : >"$CMDS"
PF_DIR="" GARAGE_PIDS=""
declare -A JG_PID=() JG_DIR=() JG_SMTP=() JG_POPS=()

on_exit() {
  for n in "${!JG_PID[@]}"; do stop_pid "${JG_PID[$n]}"; done
  for p in $GARAGE_PIDS; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in $GARAGE_PIDS; do kill -KILL "$p" 2>/dev/null || true; done
  stop_postfix "$PF_DIR"
  kill_dovecot
}
bench_traps
probe_machine

if [ "$INSTALL" = 1 ] && { ! command -v postfix >/dev/null || ! command -v dovecot >/dev/null || [ ! -x /usr/lib/dovecot/pop3 ]; }; then
  log "installing postfix + dovecot (Debian packages)"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt_install postfix dovecot-core dovecot-lmtpd dovecot-pop3d
fi
if [ "$BUILD" = 1 ]; then
  log "building (release)"
  run_logged cargo build --release --bin journalgate --example loadgen >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; exit 1; }
fi

# ------------------------------------------------------------------ the journal report
TEMPLATE="$WORK/report.eml"
{
  printf 'From: Alice Example <alice@contoso.example>\r\nTo: Bob Example <bob@contoso.example>\r\n'
  printf 'Subject: Q3 figures, draft {n}\r\nMessage-ID: <journal-{n}@journal.report.generator>\r\n'
  printf 'Date: %s\r\nX-MS-Journal-Report:\r\nMIME-Version: 1.0\r\n' "$(date -R)"
  printf 'Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n'
  head -c $(( REPORT_SIZE * 3 / 4 - 300 )) /dev/urandom | base64 -w 76 | sed 's/$/\r/'
} >"$TEMPLATE"
log "report template: $(wc -c <"$TEMPLATE") bytes"

# ------------------------------------------------------------------ garage
log "starting a 3-node Garage cluster"
run_logged python3 "$BENCH_DIR/garage_up.py" "$WORK/garage" >"$WORK/garage.json"
GARAGE_PIDS=$(python3 -c 'import json,sys; print(" ".join(map(str, json.load(open(sys.argv[1]))["pids"])))' "$WORK/garage.json")
gj() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); 
for k in sys.argv[2].split("."): v = v[int(k)] if isinstance(v, list) else v[k]
print(v)' "$WORK/garage.json" "$1"; }

# ------------------------------------------------------------------ journalgate nodes
jg_node() { # NAME BACKEND(local|s3) GARAGE_NODE
  local name=$1 d="$WORK/$1"
  mkdir -p "$d/data"; JG_DIR[$name]=$d
  JG_SMTP[$name]=$(free_port); JG_POPS[$name]=$(free_port)
  {
    jg_config data_dir="$d/data" smtp="${JG_SMTP[$name]}" pop3_tls="${JG_POPS[$name]}" \
      smtp_max_connections_per_ip=100
    printf '[archive]\nenabled = false\n'
    if [ "$2" = s3 ]; then
      printf '[storage]\nbackend = "s3"\nendpoint = "%s"\nregion = "garage"\nbucket = "%s"\n' \
        "$(gj "endpoints.$3")" "$(gj bucket)"
      printf 'access_key_id = "%s"\nsecret_access_key_file = "%s"\nnode_id = "%s"\n' \
        "$(gj key_id)" "$(gj secret_file)" "$name"
    fi
  } >"$d/journalgate.toml"
  cp "$d/journalgate.toml" "$WORK/res/journalgate-$name.toml"
  jg_serve "$d/journalgate.toml" "$d"; JG_PID[$name]=$!
  jg_wait_ready "$d" "${JG_PID[$name]}" || { tail -20 "$d/stderr" >&2; exit 1; }
  log "journalgate $name ($2) smtp ${JG_SMTP[$name]} pop3s ${JG_POPS[$name]}"
}
jg_node local local 0
jg_node node1 s3 0
jg_node node2 s3 1

# ------------------------------------------------------------------ postfix + dovecot
PF_SMTP=$(free_port) DC_POPS=$(free_port)
PF_DIR="$WORK/postfix"; DC="$WORK/dovecot"
mkdir -p "$PF_DIR/etc" "$PF_DIR/queue" "$PF_DIR/data" "$DC/run" "$DC/state" "$DC/home"
chown postfix:postfix "$PF_DIR/data"; chown nobody:nogroup "$DC/home"
dovecot_cert "$DC"
postfix_conf "$PF_DIR" "$PF_SMTP" "$DC/run/lmtp"
{
  dovecot_conf "$DC" instance=jgcluster protocols="pop3 lmtp" password=benchpass ssl=required fsync=always
  printf 'service pop3-login {\n  inet_listener pop3 {\n    port = 0\n  }\n  inet_listener pop3s {\n    address = 127.0.0.1\n    port = %s\n    ssl = yes\n  }\n}\n' "$DC_POPS"
  printf 'service lmtp {\n  unix_listener lmtp {\n    mode = 0666\n  }\n}\n'
} >"$DC/dovecot.conf"
cp "$DC/dovecot.conf" "$WORK/res/dovecot.conf"; cp "$PF_DIR/etc/main.cf" "$WORK/res/postfix-main.cf"
start_dovecot "$DC" "$DC_POPS" || exit 1
run_logged postfix -c "$PF_DIR/etc" start >"$PF_DIR/start.log" 2>&1 </dev/null || { cat "$PF_DIR/start.log" >&2; exit 1; }
for _ in $(seq 100); do [ -f "$PF_DIR/queue/pid/master.pid" ] && ss -Htln "sport = :$PF_SMTP" | grep -q . && break; sleep 0.1; done
PF_MASTER=$(tr -dc 0-9 <"$PF_DIR/queue/pid/master.pid")

# ------------------------------------------------------------------ cases
mailbox() { # NODE -> "ADDRESS PASSWORD"
  local out
  out=$("$JG" --config "${JG_DIR[$1]}/journalgate.toml" mailbox create --name bench --json </dev/null)
  printf '%s %s\n' "$(printf '%s' "$out" | sed -n 's/.*"address":"\([^"]*\)".*/\1/p')" \
    "$(printf '%s' "$out" | sed -n 's/.*"password":"\([^"]*\)".*/\1/p')"
}
send() { # OUT PORT TO COUNT CONC START [MAILDIR]
  local extra=(); [ -n "${7:-}" ] && extra=(--wait-maildir "$7")
  run_logged timeout $((CASE_TIMEOUT + 60)) "$LG" smtp --addr "127.0.0.1:$2" --to "$3" --count "$4" \
    --message-file "$TEMPLATE" --counter-start "$6" --concurrency "$5" --timeout "$CASE_TIMEOUT" "${extra[@]}" \
    >"$WORK/res/$1.json" 2>"$WORK/res/$1.err" || true
}
collect() { # OUT PORT USER PASS
  run_logged timeout "$CASE_TIMEOUT" "$LG" pop3 --addr "127.0.0.1:$2" --tls --user "$3" --pass "$4" --delete \
    >"$WORK/res/$1.json" 2>"$WORK/res/$1.err" || true
}
cpu() { # PIDS... -> ticks
  tree_cpu_ticks "$@"
}
ms_per() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN{ if (n > 0) printf "%.2f", t * 1000 / hz / n; else print "-" }'; }
TABLE="$WORK/table.md"
{
  echo "| System | C | ingest msg/s | gateway CPU ms/msg | Garage CPU ms/msg | accepted | collect msg/s | collect MB/s | collected |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >"$TABLE"
row() { # SYSTEM C SEND_JSON... (summed) ; uses globals GW_T STORE_T ACC COLL
  echo "| $1 | $2 | $3 | $4 | $5 | $6 | $(jget "$WORK/res/$7.json" msgs_per_s) | $(jget "$WORK/res/$7.json" mb_per_s) | $(jget "$WORK/res/$7.json" messages) |" >>"$TABLE"
}
start=0
for c in $CONCS; do
  check_budget "C=$c" || break
  # L and G1: one node
  for sys in local node1; do
    read -r addr pass < <(mailbox "$sys")
    settle=1; sync; sleep "$settle"; note_load "$sys C=$c"
    g0=$(cpu "${JG_PID[$sys]}"); s0=$(cpu $GARAGE_PIDS)
    send "$sys-c$c" "${JG_SMTP[$sys]}" "$addr" "$N" "$c" "$start"; start=$((start + N))
    g1=$(cpu "${JG_PID[$sys]}"); s1=$(cpu $GARAGE_PIDS)
    acc=$(jget "$WORK/res/$sys-c$c.json" messages)
    collect "$sys-c$c-pop3" "${JG_POPS[$sys]}" "${addr%@*}" "$pass"
    label=$([ "$sys" = local ] && echo "L. journalgate, local back-end" || echo "G1. journalgate, 1 node on Garage")
    store=$([ "$sys" = local ] && echo "-" || ms_per $((s1 - s0)) "$acc")
    row "$label" "$c" "$(jget "$WORK/res/$sys-c$c.json" msgs_per_s)" "$(ms_per $((g1 - g0)) "$acc")" "$store" "$acc" "$sys-c$c-pop3"
    log "$label C=$c: $(cat "$WORK/res/$sys-c$c.json")"
  done
  # G2: two nodes, half the load each, at once
  read -r addr pass < <(mailbox node1)
  sync; sleep 3; note_load "G2 C=$c"   # node2 knows the mailbox from the store at once
  half=$((N / 2)); per=$(( c > 1 ? c / 2 : 1 ))
  g0=$(cpu "${JG_PID[node1]}" "${JG_PID[node2]}"); s0=$(cpu $GARAGE_PIDS)
  t0=$(date +%s.%N)
  send "g2a-c$c" "${JG_SMTP[node1]}" "$addr" "$half" "$per" "$start" &
  pa=$!
  send "g2b-c$c" "${JG_SMTP[node2]}" "$addr" "$half" "$per" "$((start + half))" &
  pb=$!
  wait "$pa" "$pb" || true
  t1=$(date +%s.%N); start=$((start + N))
  g1=$(cpu "${JG_PID[node1]}" "${JG_PID[node2]}"); s1=$(cpu $GARAGE_PIDS)
  acc=$(( $(jget "$WORK/res/g2a-c$c.json" messages) + $(jget "$WORK/res/g2b-c$c.json" messages) ))
  last=$(awk -v a="$(jget "$WORK/res/g2a-c$c.json" last_250_unix)" -v b="$(jget "$WORK/res/g2b-c$c.json" last_250_unix)" 'BEGIN{ print (a > b ? a : b) }')
  rate=$(awk -v n="$acc" -v a="$t0" -v b="$last" 'BEGIN{ d = b - a; if (d <= 0) d = 1e-9; printf "%.1f", n / d }')
  collect "g2-c$c-pop3" "${JG_POPS[node2]}" "${addr%@*}" "$pass"
  row "G2. journalgate, 2 nodes on Garage ($per + $per connections)" "$c" "$rate" "$(ms_per $((g1 - g0)) "$acc")" "$(ms_per $((s1 - s0)) "$acc")" "$acc" "g2-c$c-pop3"
  # P: Postfix + Dovecot
  user="bench$c"
  sync; sleep 2; note_load "P C=$c"
  p0=$(cpu "$PF_MASTER" "$DC_MASTER")
  send "pd-c$c" "$PF_SMTP" "$user@bench.test" "$N" "$c" "$start" "$DC/home/$user/Maildir"; start=$((start + N))
  p1=$(cpu "$PF_MASTER" "$DC_MASTER")
  acc=$(jget "$WORK/res/pd-c$c.json" delivered)
  collect "pd-c$c-pop3" "$DC_POPS" "$user" benchpass
  row "P. Postfix + Dovecot" "$c" "$(jget "$WORK/res/pd-c$c.json" delivered_msgs_per_s)" "$(ms_per $((p1 - p0)) "$acc")" "-" "$acc" "pd-c$c-pop3"
done

OUT=$(results_file "cluster-$(date +%F)$([ "$QUICK" = 1 ] && echo -quick).md")
{
  echo "# Cluster benchmark ($(date +%F), $([ "$QUICK" = 1 ] && echo quick || echo full): $N reports of ~${REPORT_SIZE} bytes per case)"
  echo
  echo "Machine: $HW_LINE. Files on $FS_NOTE. One machine runs the Garage cluster (3 nodes,"
  echo "replication factor 3, data_fsync and metadata_fsync on), the gateway nodes, the load"
  echo "generator and Postfix + Dovecot: every process shares the same 2 cores."
  echo
  cat "$TABLE"
  echo
  report_appendix journalgate-local.toml journalgate-node1.toml journalgate-node2.toml dovecot.conf postfix-main.cf
} >"$OUT"
print_summary "$TABLE" /dev/null
log "results: $OUT"
