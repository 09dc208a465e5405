#!/usr/bin/env bash
# journalgate benchmark: SMTP ingest (durable) and POP3 download+delete, against
# Postfix + Dovecot (Debian packages, LMTP into Maildir, fsync on) and against the
# Postfix smtp-source -> smtp-sink ceiling, all in one run, on loopback only.
#
#   bench/run.sh            full run: 10,000 x 20 KB at C=1, 8, 32; 200 x 5 MB at C=4
#   bench/run.sh --quick    sanity run: 1,000 x 20 KB; 20 x 5 MB
#
# Each case runs on journalgate and then on Postfix + Dovecot, back to back; the
# C=1 pair and journalgate at C=32 run BENCH_REPS times (default 3, 1 with
# --quick) and the median is reported. BENCH_BUDGET_SECS (default 900) bounds
# the whole run. Needs root (apt install, postfix/dovecot privilege drop).
#
# Development switches: --skip-journalgate, --skip-mta, --skip-ceiling,
# --no-install, --keep (keep the temp dir).
#
# Prints a markdown table and writes it to bench/results/results-<date>[-quick].md.
# Everything runs in a private temp dir with private ports; the system's own
# Postfix / Dovecot configuration is never read or changed. Each case has a
# time limit; all processes and temp dirs are removed on exit.
set -euo pipefail

QUICK=0 SKIP_JG=0 SKIP_MTA=0 SKIP_CEIL=0 INSTALL=1 KEEP=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --skip-journalgate) SKIP_JG=1 ;;
    --skip-mta) SKIP_MTA=1 ;;
    --skip-ceiling) SKIP_CEIL=1 ;;
    --no-install) INSTALL=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  N=1000 BIGN=20 CASE_TIMEOUT=120
else
  N=10000 BIGN=200 CASE_TIMEOUT=240
fi
# runs of the C=1 pair and of journalgate at C=32 (median reported); 1 with --quick
if [ "$QUICK" = 1 ]; then REPS=${BENCH_REPS:-1}; else REPS=${BENCH_REPS:-3}; fi
SMALL=20000          # 20 KB
BIG=5000000          # 5 MB
CONCS="1 8 32"
BIGC=4

# bench_init, log, run_logged, check_budget, free_port, jget, fmt*, human_n, samplers,
# apt_install, jg_config, jg_serve, stop_pid, dovecot_conf, report parts
. "$(dirname "$0")/lib.sh"
# RUN_BUDGET: a hard stop for the whole run (15 min): later cases are skipped
bench_init bench 900

WORK=$(mktemp -d /tmp/jg-bench.XXXXXX)
chmod 755 "$WORK"            # postfix / dovecot users must traverse it
mkdir -p "$WORK/res"
CMDS="$WORK/commands.txt"
: >"$CMDS"

JG_PID="" PF_DIR="" SINK_PID=""

on_exit() { # (bench_exit, before WORK is removed)
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null
  stop_pid "$JG_PID" 5
  stop_postfix "$PF_DIR"
  kill_dovecot
}
bench_traps

settle() { sync; sleep 2; }

# ------------------------------------------------------------------ setup
log "work dir $WORK"
probe_machine

if [ "$INSTALL" = 1 ] && [ "$SKIP_MTA$SKIP_CEIL" != 11 ]; then
  if ! command -v postfix >/dev/null || ! command -v dovecot >/dev/null || [ ! -x /usr/sbin/smtp-sink ] \
     || [ ! -x /usr/lib/dovecot/lmtp ] || [ ! -x /usr/lib/dovecot/pop3 ]; then
    log "installing postfix + dovecot (Debian packages)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt_install postfix dovecot-core dovecot-lmtpd dovecot-pop3d
  fi
fi

log "building (release)"
run_logged cargo build --release --example loadgen
JG_BUILD=ok
if [ "$SKIP_JG" = 0 ]; then
  if ! run_logged cargo build --release --bin journalgate >"$WORK/jg-build.log" 2>&1; then
    JG_BUILD=failed
    log "journalgate does not build; its half is skipped:"; tail -20 "$WORK/jg-build.log" >&2
  fi
fi

# ------------------------------------------------------------------ smtp case helper
# smtp_case NAME ADDR TO COUNT SIZE CONC [MAILDIR]
smtp_case() {
  local name=$1 addr=$2 to=$3 count=$4 size=$5 conc=$6 maildir=${7:-}
  local extra=()
  [ -n "$maildir" ] && extra=(--wait-maildir "$maildir")
  log "case $name: $count x $size B, concurrency $conc -> $addr"
  note_load "$name"
  run_logged timeout $((CASE_TIMEOUT + 120)) "$LG" smtp --addr "$addr" --to "$to" --count "$count" \
    --size "$size" --concurrency "$conc" --timeout "$CASE_TIMEOUT" "${extra[@]}" \
    >"$WORK/res/$name.json" 2>"$WORK/res/$name.err" || true
  cat "$WORK/res/$name.json" >&2
}
pop3_case() { # NAME ADDR USER PASS
  local name=$1 addr=$2 user=$3 pass=$4
  log "case $name: POP3 RETR+DELE all messages of $user via $addr (implicit TLS)"
  note_load "$name"
  printf '%s\n' "timeout $CASE_TIMEOUT $LG pop3 --addr $addr --tls --user $user --pass '***' --batch 100 --delete" >>"$CMDS"
  timeout "$CASE_TIMEOUT" "$LG" pop3 --addr "$addr" --tls --user "$user" --pass "$pass" --batch 100 --delete \
    >"$WORK/res/$name.json" 2>"$WORK/res/$name.err" || true
  cat "$WORK/res/$name.json" >&2
}

# ------------------------------------------------------------------ a. journalgate
JG_HWM="" JG_SKIPPED_WHY=""
if [ "$SKIP_JG" = 1 ]; then JG_SKIPPED_WHY="skipped (--skip-journalgate)";
elif [ "$JG_BUILD" != ok ]; then JG_SKIPPED_WHY="build failed";
fi
if [ -z "$JG_SKIPPED_WHY" ]; then
  JGD="$WORK/journalgate"; mkdir -p "$JGD/data"
  JG_SMTP=$(free_port) JG_POP=$(free_port) JG_POPS=$(free_port)
  jg_config data_dir="$JGD/data" smtp="$JG_SMTP" pop3="$JG_POP" pop3_tls="$JG_POPS" >"$JGD/journalgate.toml"
  cp "$JGD/journalgate.toml" "$WORK/res/journalgate.toml"
  log "starting journalgate (smtp $JG_SMTP, pop3s $JG_POPS)"
  jg_serve "$JGD/journalgate.toml" "$JGD"
  JG_PID=$!
  if ! jg_wait_ready "$JGD" "$JG_PID"; then
    log "journalgate did not become ready:"; tail -20 "$JGD/stderr" >&2
    JG_SKIPPED_WHY="did not start"
  fi
fi

declare -A JG_MBX_ADDR JG_MBX_ID JG_MBX_PASS
jg_mailbox() { # NAME -> sets JG_MBX_* [NAME]
  local out
  out=$(run_logged "$JG" --config "$JGD/journalgate.toml" mailbox create --name "bench-$1" --json </dev/null) || true
  JG_MBX_ID[$1]=$(printf '%s' "$out" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
  JG_MBX_ADDR[$1]=$(printf '%s' "$out" | sed -n 's/.*"address":"\([^"]*\)".*/\1/p')
  JG_MBX_PASS[$1]=$(printf '%s' "$out" | sed -n 's/.*"password":"\([^"]*\)".*/\1/p')
  [ -n "${JG_MBX_ADDR[$1]}" ] || { log "mailbox create failed: $out"; return 1; }
}

# ------------------------------------------------------------------ b. Postfix + Dovecot
PD_HWM="" PD_SKIPPED_WHY=""
[ "$SKIP_MTA" = 1 ] && PD_SKIPPED_WHY="skipped (--skip-mta)"
if [ -z "$PD_SKIPPED_WHY" ]; then
  check_budget "Postfix + Dovecot" || PD_SKIPPED_WHY="run budget exhausted"
fi
if [ -z "$PD_SKIPPED_WHY" ]; then
  PF_SMTP=$(free_port) DC_POPS=$(free_port)
  PF_DIR="$WORK/postfix"; DC="$WORK/dovecot"
  mkdir -p "$PF_DIR/etc" "$PF_DIR/queue" "$PF_DIR/data" "$DC/run" "$DC/state" "$DC/home"
  chown postfix:postfix "$PF_DIR/data"
  chown nobody:nogroup "$DC/home"
  dovecot_cert "$DC"
  postfix_conf "$PF_DIR" "$PF_SMTP" "$DC/run/lmtp"
  {
    echo "# private benchmark instance (dovecot -c this file): nothing from /etc/dovecot is read"
    dovecot_conf "$DC" instance=jgbench protocols="pop3 lmtp" password=benchpass ssl=required fsync=always
    cat <<EOF
service pop3-login {
  inet_listener pop3 {
    port = 0
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $DC_POPS
    ssl = yes
  }
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  unix_listener lmtp {
    mode = 0666
  }
}
EOF
  } >"$DC/dovecot.conf"
  cp "$PF_DIR/etc/main.cf" "$WORK/res/postfix-main.cf"; cp "$PF_DIR/etc/master.cf" "$WORK/res/postfix-master.cf"
  cp "$DC/dovecot.conf" "$WORK/res/dovecot.conf"
  DC_PIDFILE="$DC/run/master.pid"
  log "starting dovecot (pop3s $DC_POPS) and postfix (smtp $PF_SMTP)"
  run_logged dovecot -c "$DC/dovecot.conf" >"$DC/start.log" 2>&1 </dev/null || { cat "$DC/start.log" >&2; PD_SKIPPED_WHY="dovecot did not start"; }
  if [ -z "$PD_SKIPPED_WHY" ]; then
    run_logged postfix -c "$PF_DIR/etc" start >"$PF_DIR/start.log" 2>&1 </dev/null || { cat "$PF_DIR/start.log" "$PF_DIR/maillog" >&2; PD_SKIPPED_WHY="postfix did not start"; }
  fi
  for _ in $(seq 100); do
    [ -f "$PF_DIR/queue/pid/master.pid" ] && [ -f "$DC_PIDFILE" ] && [ -S "$DC/run/lmtp" ] \
      && ss -Htln "sport = :$PF_SMTP" | grep -q . && break
    sleep 0.1
  done
  PF_MASTER=$(tr -dc 0-9 <"$PF_DIR/queue/pid/master.pid" 2>/dev/null || true)
  DC_MASTER=$(tr -dc 0-9 <"$DC_PIDFILE" 2>/dev/null || true)
  if [ -z "$PD_SKIPPED_WHY" ] && { [ -z "$PF_MASTER" ] || [ -z "$DC_MASTER" ]; }; then
    PD_SKIPPED_WHY="postfix/dovecot did not start"
  fi
fi
# ------------------------------------------------------------------ warm-up
if [ -z "$JG_SKIPPED_WHY" ]; then
  jg_mailbox warm
  smtp_case jg-warm "127.0.0.1:$JG_SMTP" "${JG_MBX_ADDR[warm]}" 20 "$SMALL" 2
fi
if [ -z "$PD_SKIPPED_WHY" ]; then
  smtp_case pd-warm "127.0.0.1:$PF_SMTP" warm@bench.test 20 "$SMALL" 2 "$DC/home/warm/Maildir"
  if [ "$(jget "$WORK/res/pd-warm.json" delivered)" != 20 ]; then
    log "Postfix -> Dovecot delivery does not work:"; tail -20 "$PF_DIR/maillog" "$DC/dovecot.log" >&2
    PD_SKIPPED_WHY="delivery failed"
  fi
fi

# ------------------------------------------------------------------ the cases, interleaved
# Each case runs on journalgate and then on Postfix + Dovecot, back to back, so that
# both see the same machine conditions. Fresh mailbox / Maildir user per case.
jg_on() { [ -z "$JG_SKIPPED_WHY" ]; }
declare -A PD_USER
# pick_median BASE KEY: of BASE-r*.json, copy the run with the median KEY to BASE.json
# (and its .peak), and list all the runs' values in BASE.reps.
pick_median() {
  local base=$1 key=$2 f v list=() n mid chosen
  for f in "$WORK/res/$base"-r*.json; do
    [ -s "$f" ] || continue
    v=$(jget "$f" "$key"); list+=("${v:-0} $f")
  done
  n=${#list[@]}
  [ "$n" -gt 0 ] || return 0
  chosen=$(printf '%s\n' "${list[@]}" | sort -n | awk -v m=$(( (n + 1) / 2 )) 'NR==m{print $2}')
  cp "$chosen" "$WORK/res/$base.json"
  [ -f "${chosen%.json}.peak" ] && cp "${chosen%.json}.peak" "$WORK/res/$base.peak"
  if [ "$n" -gt 1 ]; then
    printf '%s\n' "${list[@]}" | awk '{printf "%s%.0f", (NR>1 ? " / " : ""), $1}' >"$WORK/res/$base.reps"
  fi
}
pd_on() { [ -z "$PD_SKIPPED_WHY" ]; }
for c in $CONCS; do
  # The target-deciding cases are repeated and their median reported: the C=1 pair
  # (journalgate vs Postfix + Dovecot, interleaved) and journalgate at C=32.
  jreps=1 preps=1
  [ "$c" = 1 ] && { jreps=$REPS; preps=$REPS; }
  [ "$c" = 32 ] && jreps=$REPS
  for r in $(seq 1 "$(( jreps > preps ? jreps : preps ))"); do
    if [ "$r" -le "$jreps" ] && jg_on && check_budget "journalgate C=$c #$r"; then
      jg_mailbox "c$c"
      settle
      start_sampler "jg-smtp-c$c-r$r" "$JG_PID"
      smtp_case "jg-smtp-c$c-r$r" "127.0.0.1:$JG_SMTP" "${JG_MBX_ADDR[c$c]}" "$N" "$SMALL" "$c"
      stop_sampler "jg-smtp-c$c-r$r"
    fi
    if [ "$r" -le "$preps" ] && pd_on && check_budget "Postfix+Dovecot C=$c #$r"; then
      settle
      start_sampler "pd-smtp-c$c-r$r" "$PF_MASTER" "$DC_MASTER"
      smtp_case "pd-smtp-c$c-r$r" "127.0.0.1:$PF_SMTP" "c${c}r$r@bench.test" "$N" "$SMALL" "$c" "$DC/home/c${c}r$r/Maildir"
      stop_sampler "pd-smtp-c$c-r$r"
      PD_USER[c$c]="c${c}r$r"
    fi
  done
  pick_median "jg-smtp-c$c" msgs_per_s
  pick_median "pd-smtp-c$c" delivered_msgs_per_s
done
if jg_on && check_budget "journalgate 5 MB"; then
  jg_mailbox big
  settle
  start_sampler jg-smtp-big "$JG_PID"
  smtp_case jg-smtp-big "127.0.0.1:$JG_SMTP" "${JG_MBX_ADDR[big]}" "$BIGN" "$BIG" "$BIGC"
  stop_sampler jg-smtp-big
fi
if pd_on && check_budget "Postfix+Dovecot 5 MB"; then
  settle
  start_sampler pd-smtp-big "$PF_MASTER" "$DC_MASTER"
  smtp_case pd-smtp-big "127.0.0.1:$PF_SMTP" "big@bench.test" "$BIGN" "$BIG" "$BIGC" "$DC/home/big/Maildir"
  stop_sampler pd-smtp-big
fi
for mb in c32 big; do
  if jg_on && [ -n "${JG_MBX_ID[$mb]:-}" ] && check_budget "journalgate POP3 $mb"; then
    settle
    start_sampler "jg-pop3-$mb" "$JG_PID"
    pop3_case "jg-pop3-$mb" "127.0.0.1:$JG_POPS" "${JG_MBX_ID[$mb]}" "${JG_MBX_PASS[$mb]}"
    stop_sampler "jg-pop3-$mb"
  fi
  if pd_on && [ -s "$WORK/res/pd-smtp-$mb.json" ] && check_budget "Dovecot POP3 $mb"; then
    settle
    start_sampler "pd-pop3-$mb" "$PF_MASTER" "$DC_MASTER"
    pop3_case "pd-pop3-$mb" "127.0.0.1:$DC_POPS" "${PD_USER[$mb]:-$mb}" benchpass
    stop_sampler "pd-pop3-$mb"
  fi
done

# ------------------------------------------------------------------ peaks, login burst, stop
if pd_on; then
  # best effort: VmHWM of the processes still alive (short-lived ones are gone)
  PD_HWM=$(hwm_mb "$PF_MASTER" "$DC_MASTER" $(ps -o pid= --ppid "$PF_MASTER") $(ps -o pid= --ppid "$DC_MASTER"))
  log "postfix+dovecot: sum of VmHWM of live processes ${PD_HWM} MB"
  grep -E 'status=(deferred|bounced)|warning|fatal|panic' "$PF_DIR/maillog" | head -10 >"$WORK/res/pd-errors.txt" || true
  grep -E 'Error|Fatal|Panic' "$DC/dovecot.log" | head -10 >>"$WORK/res/pd-errors.txt" || true
fi
if jg_on; then
  JG_HWM=$(hwm_mb "$JG_PID")
  # Login burst: 8 POP3 logins at once (each unwraps the mailbox key with scrypt).
  # Run after the peak of the job above was taken, so it does not change that figure.
  if check_budget "journalgate login burst"; then
    log "case jg-login-burst: 8 concurrent POP3 logins"
    burst_pids=()
    for i in 1 2 3 4 5 6 7 8; do jg_mailbox "burst$i"; done
    printf '%s\n' "8 x $LG pop3 --addr 127.0.0.1:$JG_POPS --tls --user <mailbox i> --pass '***'   (concurrently)" >>"$CMDS"
    t0=$(date +%s.%N)
    for i in 1 2 3 4 5 6 7 8; do
      "$LG" pop3 --addr "127.0.0.1:$JG_POPS" --tls --user "${JG_MBX_ID[burst$i]}" --pass "${JG_MBX_PASS[burst$i]}" \
        >"$WORK/res/burst$i.out" 2>&1 &
      burst_pids+=($!)
    done
    for p in "${burst_pids[@]}"; do wait "$p" || true; done
    t1=$(date +%s.%N)
    burst_ok=$(cat "$WORK"/res/burst*.out | grep -c '"failures":0' || true)
    JG_HWM_BURST=$(hwm_mb "$JG_PID")
    awk -v ok="$burst_ok" -v t0="$t0" -v t1="$t1" -v h="$JG_HWM_BURST" 'BEGIN{ printf "{\"logins\":8,\"ok\":%d,\"seconds\":%.3f,\"vmhwm_mb\":%s}\n", ok, t1-t0, h }' \
      >"$WORK/res/jg-login-burst.json"
    cat "$WORK/res/jg-login-burst.json" >&2
  fi
  JG_ERRLINES=$(grep -ciE 'error|panic' "$JGD/stderr" || true)
  grep -iE 'error|panic' "$JGD/stderr" | head -20 >"$WORK/res/jg-errors.txt" || true
  log "journalgate VmHWM ${JG_HWM} MB; error/panic log lines: $JG_ERRLINES"
  kill -TERM "$JG_PID" 2>/dev/null; wait "$JG_PID" 2>/dev/null || true; JG_PID=""
fi

if [ -n "$PF_DIR" ] && [ -f "$PF_DIR/queue/pid/master.pid" ]; then
  postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1 </dev/null || true
fi
if [ -n "$DC_PIDFILE" ] && [ -f "$DC_PIDFILE" ]; then
  kill -TERM "$(tr -dc 0-9 <"$DC_PIDFILE")" 2>/dev/null || true
fi

# ------------------------------------------------------------------ c. smtp-source -> smtp-sink ceiling
CEIL_SKIPPED_WHY=""
[ "$SKIP_CEIL" = 1 ] && CEIL_SKIPPED_WHY="skipped (--skip-ceiling)"
[ -z "$CEIL_SKIPPED_WHY" ] && [ ! -x /usr/sbin/smtp-sink ] && CEIL_SKIPPED_WHY="smtp-sink not installed"
if [ -z "$CEIL_SKIPPED_WHY" ]; then
  SINK_PORT=$(free_port)
  printf '%s\n' "/usr/sbin/smtp-sink -u nobody 127.0.0.1:$SINK_PORT 256 &" >>"$CMDS"
  /usr/sbin/smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 256 >"$WORK/sink.log" 2>&1 </dev/null &
  SINK_PID=$!
  for _ in $(seq 50); do ss -Htln "sport = :$SINK_PORT" | grep -q . && break; sleep 0.1; done
  for c in 1 32; do
    check_budget "smtp-source C=$c" || break
    # -l is the body length; smtp-source adds ~200 bytes of headers
    log "case ceil-source-c$c: smtp-source -> smtp-sink, $N x $SMALL B, $c sessions"
    printf '%s\n' "timeout $CASE_TIMEOUT /usr/sbin/smtp-source -d -s $c -m $N -l $SMALL -f loadgen@bench.test -t sink@bench.test 127.0.0.1:$SINK_PORT" >>"$CMDS"
    t0=$(date +%s.%N)
    if timeout "$CASE_TIMEOUT" /usr/sbin/smtp-source -d -s "$c" -m "$N" -l "$SMALL" -f loadgen@bench.test \
         -t sink@bench.test "127.0.0.1:$SINK_PORT" >"$WORK/res/ceil-source-c$c.err" 2>&1 </dev/null; then ok=$N; else ok=0; fi
    t1=$(date +%s.%N)
    awk -v n="$ok" -v s="$SMALL" -v t0="$t0" -v t1="$t1" -v c="$c" 'BEGIN{ d=t1-t0;
      printf "{\"messages\":%d,\"seconds\":%.3f,\"msgs_per_s\":%.3f,\"mb_per_s\":%.3f,\"failures\":%d,\"concurrency\":%d}\n",
        n, d, n/d, n*s/1e6/d, '"$N"'-n, c }' >"$WORK/res/ceil-source-c$c.json"
    cat "$WORK/res/ceil-source-c$c.json" >&2
    smtp_case "ceil-loadgen-c$c" "127.0.0.1:$SINK_PORT" sink@bench.test "$N" "$SMALL" "$c"
  done
  kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null || true; SINK_PID=""
fi

# ------------------------------------------------------------------ d. report
R="$WORK/res"
SZ_S="20 KB" SZ_B="5 MB"
row() { # system case conc file rate_key mb_key peakfile note
  local sys=$1 cs=$2 conc=$3 f=$4 rk=$5 mk=$6 peak=$7 note=${8:-}
  if [ ! -s "$f" ]; then
    printf '| %s | %s | %s | – | – | – | – | – | – | – | – | %s |\n' "$sys" "$cs" "$conc" "not run${note:+; $note}"
    return
  fi
  local msgs fail secs rate mbs rss="–" pss="–" lat="–"
  msgs=$(jget "$f" messages); fail=$(jget "$f" failures)
  if [ "$rk" = delivered_msgs_per_s ]; then msgs=$(jget "$f" delivered); secs=$(jget "$f" delivered_seconds); else secs=$(jget "$f" seconds); fi
  rate=$(jget "$f" "$rk"); mbs=$(jget "$f" "$mk")
  if [ -n "$peak" ] && [ -s "$peak" ]; then rss=$(awk '{print $1}' "$peak"); pss=$(awk '{print $2}' "$peak"); fi
  [ -n "$(jget "$f" latency_ms_p50)" ] && lat="$(jget "$f" latency_ms_p50) / $(jget "$f" latency_ms_p99)"
  [ -s "${f%.json}.reps" ] && note="median of $(awk -F' / ' '{print NF}' "${f%.json}.reps"): $(cat "${f%.json}.reps") msg/s${note:+; $note}"
  printf '| %s | %s | %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s |\n' "$sys" "$cs" "$conc" "$(human_n "${msgs:-0}")" "${fail:-?}" \
    "$(fmt1 "$secs")" "$(human_n "$(fmt0 "$rate")")" "$(fmt1 "$mbs")" "$lat" "$rss" "$pss" "$note"
}

TABLE="$WORK/table.md"
{
  echo "| System | Case | Conc. | Messages | Failures | Seconds | msg/s | MB/s | p50 / p99 ms | Peak RSS MB | Peak PSS MB | Note |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for c in $CONCS; do
    row journalgate "SMTP ingest $(human_n $N) × $SZ_S" "$c" "$R/jg-smtp-c$c.json" msgs_per_s mb_per_s "$R/jg-smtp-c$c.peak" "${JG_SKIPPED_WHY:-durable 250}"
  done
  row journalgate "SMTP ingest $(human_n $BIGN) × $SZ_B" "$BIGC" "$R/jg-smtp-big.json" msgs_per_s mb_per_s "$R/jg-smtp-big.peak" "${JG_SKIPPED_WHY:-durable 250}"
  row journalgate "POP3 RETR+DELE $SZ_S (pop3s)" 1 "$R/jg-pop3-c32.json" msgs_per_s mb_per_s "$R/jg-pop3-c32.peak" "${JG_SKIPPED_WHY}"
  row journalgate "POP3 RETR+DELE $SZ_B (pop3s)" 1 "$R/jg-pop3-big.json" msgs_per_s mb_per_s "$R/jg-pop3-big.peak" "${JG_SKIPPED_WHY}"
  for c in $CONCS; do
    acc=""; [ -s "$R/pd-smtp-c$c.json" ] && acc="delivered to Maildir; accepted $(fmt0 "$(jget "$R/pd-smtp-c$c.json" msgs_per_s)") msg/s"
    row "Postfix + Dovecot" "SMTP → LMTP → Maildir $(human_n $N) × $SZ_S" "$c" "$R/pd-smtp-c$c.json" delivered_msgs_per_s delivered_mb_per_s "$R/pd-smtp-c$c.peak" "${acc:-$PD_SKIPPED_WHY}"
  done
  acc=""; [ -s "$R/pd-smtp-big.json" ] && acc="delivered to Maildir; accepted $(fmt0 "$(jget "$R/pd-smtp-big.json" msgs_per_s)") msg/s"
  row "Postfix + Dovecot" "SMTP → LMTP → Maildir $(human_n $BIGN) × $SZ_B" "$BIGC" "$R/pd-smtp-big.json" delivered_msgs_per_s delivered_mb_per_s "$R/pd-smtp-big.peak" "${acc:-$PD_SKIPPED_WHY}"
  row "Postfix + Dovecot" "POP3 RETR+DELE $SZ_S (pop3s)" 1 "$R/pd-pop3-c32.json" msgs_per_s mb_per_s "$R/pd-pop3-c32.peak" "Dovecot ${PD_SKIPPED_WHY}"
  row "Postfix + Dovecot" "POP3 RETR+DELE $SZ_B (pop3s)" 1 "$R/pd-pop3-big.json" msgs_per_s mb_per_s "$R/pd-pop3-big.peak" "Dovecot ${PD_SKIPPED_WHY}"
  for c in 1 32; do
    row "smtp-source → smtp-sink" "ceiling, no disk, $(human_n $N) × $SZ_S body" "$c" "$R/ceil-source-c$c.json" msgs_per_s mb_per_s "" "$CEIL_SKIPPED_WHY"
  done
  for c in 1 32; do
    row "loadgen → smtp-sink" "client ceiling, $(human_n $N) × $SZ_S" "$c" "$R/ceil-loadgen-c$c.json" msgs_per_s mb_per_s "" "$CEIL_SKIPPED_WHY"
  done
} >"$TABLE"

# targets
TARGETS="$WORK/targets.md"
{
  jg1=$(jget "$R/jg-smtp-c1.json" msgs_per_s); pd1=$(jget "$R/pd-smtp-c1.json" delivered_msgs_per_s)
  jg32=$(jget "$R/jg-smtp-c32.json" msgs_per_s)
  jgf=0; for f in "$R"/jg-smtp-*.json; do [ -s "$f" ] && jgf=$(( jgf + $(jget "$f" failures) )); done
  if [ -n "$jg1" ] && [ -n "$pd1" ]; then
    awk -v a="$jg1" -v b="$pd1" 'BEGIN{ r = (b > 0) ? a/b : 0; printf "- C=1 ingest vs Postfix + Dovecot delivered: %.0f / %.0f msg/s = **%.2f×** (target ≥ 2.5×): **%s**\n", a, b, r, (r >= 2.5) ? "met" : "MISSED" }'
  else echo "- C=1 ingest vs Postfix + Dovecot: not measured"; fi
  if [ -n "$jg32" ]; then
    awk -v a="$jg32" 'BEGIN{ printf "- C=32 durable ingest: **%.0f msg/s** (target ≥ 1,500): **%s**\n", a, (a >= 1500) ? "met" : "MISSED" }'
  else echo "- C=32 durable ingest: not measured"; fi
  if [ -n "$JG_HWM" ]; then
    awk -v a="$JG_HWM" 'BEGIN{ printf "- journalgate peak RSS (VmHWM over the whole run, SMTP + POP3): **%.1f MB** (target < 100 MB): **%s**\n", a, (a < 100) ? "met" : "MISSED" }'
  else echo "- journalgate peak RSS: not measured"; fi
  if [ -n "$JG_HWM" ]; then echo "- journalgate SMTP failures (non-250) over all cases: $jgf"; fi
  if [ -s "$R/jg-login-burst.json" ]; then
    awk -v h="$(jget "$R/jg-login-burst.json" vmhwm_mb)" -v ok="$(jget "$R/jg-login-burst.json" ok)" -v t="$(jget "$R/jg-login-burst.json" seconds)" \
      'BEGIN{ printf "- journalgate VmHWM after 8 concurrent POP3 logins (run after the job; %d/8 ok in %.2f s): **%.1f MB** (target < 100 MB): **%s**\n", ok, t, h, (h < 100) ? "met" : "MISSED" }'
  fi
  if [ -n "$PD_HWM" ]; then echo "- Postfix + Dovecot: sum of VmHWM of the processes alive at the end: ${PD_HWM} MB (short-lived smtpd/lmtp/cleanup processes that exited are not in it; see the sampled columns)"; fi
} >"$TARGETS"

DATE=$(date +%F)
SUFFIX="" QNOTE="" QARG=""
if [ "$QUICK" = 1 ]; then SUFFIX="-quick" QNOTE=" (--quick)" QARG=" --quick"; fi
OUT=$(results_file "results-$DATE$SUFFIX.md")
{
  echo "# journalgate benchmark results, $(date -u +'%F %H:%M UTC')$QNOTE"
  echo
  echo "Hardware: $HW_LINE"
  echo
  echo "Versions: journalgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no commit)'), $(postconf -h mail_version 2>/dev/null | sed 's/^/Postfix /'), Dovecot $(dovecot --version 2>/dev/null | cut -d' ' -f1), $(rustc --version 2>/dev/null)"
  echo
  echo "Command: \`bench/run.sh$QARG\`"
  echo
  cat "$TABLE"
  echo
  echo "msg/s and MB/s (MB = 10^6 bytes) are end to end: first connection until the last 250 after DATA (journalgate: durable),"
  echo "or for Postfix + Dovecot until the last message is in the Dovecot Maildir (fsync on). p50 / p99 is the client's"
  echo "MAIL-to-final-250 time per transaction (for Postfix that is acceptance into its queue, not delivery)."
  echo "Peak RSS / PSS is the highest sum over the server's processes (journalgate: one process; Postfix + Dovecot: both"
  echo "masters and their children) sampled every 0.25 s during the case; PSS shares shared pages between processes and"
  echo "is the fair figure for the multi-process pair."
  echo
  echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "## Targets"
  echo
  cat "$TARGETS"
  echo
  report_errors journalgate "$R/jg-errors.txt" postfix/dovecot "$R/pd-errors.txt"
  report_appendix journalgate.toml postfix-main.cf postfix-master.cf dovecot.conf
} >"$OUT"

print_summary "$TABLE" "$TARGETS"
log "results written to $OUT (total $(( $(date +%s) - RUN_START )) s)"
