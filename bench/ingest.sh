#!/usr/bin/env bash
# journalgate ingest benchmark with the archive on: Exchange journal reports (~20 KB each,
# an original of about 18 KB inside) sent over SMTP, against the same gateway without
# archive users and against Postfix + Dovecot (Debian packages, LMTP into Maildir, fsync
# on), all in one run, on loopback only.
#
#   bench/ingest.sh            full run: 10,000 reports at C=1 and at C=32
#   bench/ingest.sh --quick    sanity run: 1,000 reports
#
# Systems:
#  A. journalgate, no archive users: [archive] journal_sources = 127.0.0.0/8, no users and
#     no recovery key (the archive takes no copy).
#  B. journalgate, archive on + recovery key: the same plus five archive users
#     (alice, bob, carol, dave, erin @contoso.example), one auditor and a recovery key
#     (`journalgate archive recovery init --out DIR`). Every report leaves a sealed intake
#     copy; the archive worker unpacks it and files the original for sender, To, Cc, Bcc,
#     the auditor and the recovery key.
#  C. Postfix + Dovecot: Postfix smtpd -> LMTP -> Dovecot Maildir, mail_fsync = always.
# For each concurrency (C=1, then C=32) A, B and C run back to back, each into one fresh
# gateway mailbox / Maildir user, with `loadgen smtp --message-file` (a journal-report
# template whose `{n}` is replaced by a counter: unique Message-IDs).
#
# msg/s: journalgate from the first connection to the last 250 (durable); Postfix +
# Dovecot until the last message is in the Maildir. CPU per message: the server's CPU
# (utime+stime from /proc, all threads; Postfix + Dovecot: both masters, all their live
# descendants, and the exited children through the masters' cutime/cstime) from just
# before the case until it is done, divided by the messages accepted. For B "done" means
# archived: the script waits until the intake is empty and `journalgate archive stats
# --json` shows pending == 0 and items == expected, so the worker's CPU is included.
# Archive lag: seconds from the last 250 until the intake is empty.
#
# Filesystem: everything runs on a fresh journaled ext4 (a 12 GB image on a loop device
# with direct I/O, made for the run and removed after it), like a production data volume:
# the root filesystem of the CI machines has no journal, which makes creating files after
# deleting many (a POP3 collector's churn, or the previous case's cleanup) cost a scan of
# recently freed inodes, and that quirk, not the systems, would dominate. --rootfs runs in
# /tmp instead.
#
# Needs root (apt install, postfix/dovecot privilege drop). Switches: --quick,
# --no-install, --no-build (use the binaries in target/release), --keep (keep the temp
# dir), --rootfs. BENCH_BUDGET_SECS (default 1200) bounds the run; later cases are skipped.
# Prints a markdown table and writes it to bench/results/ingest-<date>[-quick].md.
# Everything runs in a private temp dir with private ports; the system's own Postfix /
# Dovecot configuration is never read or changed; all processes and temp dirs are
# removed on exit.
set -euo pipefail

QUICK=0 INSTALL=1 BUILD=1 KEEP=0 LOOPFS=1
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --rootfs) LOOPFS=0 ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  N=1000 CASE_TIMEOUT=180
else
  N=10000 CASE_TIMEOUT=600
fi
CONCS="1 32"
WARM=20               # warm-up messages per system (also checks that each one works)
REPORT_SIZE=20000     # target size of one journal report (bytes)
USERS="alice bob carol dave erin"
AUDITOR=audit@contoso.example

# bench_init, log, run_logged, check_budget, free_port, jget, fmt*, human_n, tree_cpu_ticks,
# apt_install, the scratch filesystem, jg_config, jg_serve, stop_pid, dovecot_conf, report parts
. "$(dirname "$0")/lib.sh"
bench_init ingest-bench 1200

[ "$(id -u)" = 0 ] || { echo "bench/ingest.sh needs root (apt install, Postfix/Dovecot privilege drop)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/jg-ingest.XXXXXX)
if scratch_fs_possible; then
  mount_scratch_fs 12
  FS_NOTE="a fresh journaled ext4 on $LOOP_DEV (direct I/O loop over $LOOP_IMG)"
else
  FS_NOTE=$(rootfs_note)
fi
chmod 755 "$WORK"            # postfix / dovecot users must traverse it
mkdir -p "$WORK/res"
CMDS="$WORK/commands.txt"
: >"$CMDS"

PF_DIR=""
declare -A JG_PID=() JG_DIR=() JG_SMTP=() WHY=()

jg_stop() { stop_pid "${JG_PID[$1]:-}"; JG_PID[$1]=""; }   # NAME

on_exit() { # (bench_exit, before WORK is removed)
  for n in "${!JG_PID[@]}"; do jg_stop "$n"; done
  stop_postfix "$PF_DIR"
  kill_dovecot
}
bench_traps

settle() { sync; sleep 2; }
now() { date +%s.%N; }

# ------------------------------------------------------------------ setup
log "work dir $WORK"
probe_machine

if [ "$INSTALL" = 1 ]; then
  if ! command -v postfix >/dev/null || ! command -v dovecot >/dev/null || [ ! -x /usr/lib/dovecot/lmtp ]; then
    log "installing postfix + dovecot (Debian packages)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt_install postfix dovecot-core dovecot-lmtpd
  fi
fi

if [ "$BUILD" = 1 ]; then
  log "building (release)"
  if ! run_logged cargo build --release --bin journalgate --example loadgen >"$WORK/build.log" 2>&1; then
    log "the build failed:"; tail -30 "$WORK/build.log" >&2; exit 1
  fi
fi
[ -x "$JG" ] && [ -x "$LG" ] || { log "missing $JG or $LG"; exit 1; }

# ------------------------------------------------------------------ the journal report
# An Exchange envelope journal report (journal-format.md §2): the X-MS-Journal-Report
# marker, multipart/mixed, a text/plain report part (sender, subject, Message-Id, To, Cc,
# Bcc), and the original as message/rfc822 (a short text part and a base64 attachment).
# `{n}` is replaced by loadgen with each message's counter.
TEMPLATE="$WORK/journal-report.eml"
make_report() { # OUT TARGET_BYTES
  local out=$1 target=$2 b="_jgbench_journal_report_" ib="_jgbench_original_" date
  date=$(date -R)
  head_part() {
    printf 'From: Alice Example <alice@contoso.example>\r\n'
    printf 'To: Bob Example <bob@contoso.example>\r\n'
    printf 'Cc: Carol Example <carol@contoso.example>\r\n'
    printf 'Subject: Q3 figures, draft {n}\r\n'
    printf 'MIME-Version: 1.0\r\n'
    printf 'Sender:\r\n\tMicrosoft Exchange Online <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.example>\r\n'
    printf 'Message-ID: <journal-{n}@journal.report.generator>\r\n'
    printf 'Date: %s\r\n' "$date"
    printf 'X-MS-Journal-Report:\r\n'
    printf 'X-MS-Exchange-Parent-Message-Id: <orig-{n}@contoso.example>\r\n'
    printf 'Auto-Submitted: auto-generated\r\n'
    printf 'X-MS-Exchange-Generated-Message-Source: Journal Agent\r\n'
    printf 'Content-Type: multipart/mixed;\r\n\tboundary="%s"\r\n\r\n' "$b"
    printf -- '--%s\r\nContent-Type: text/plain; charset="us-ascii"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n' "$b"
    printf 'Sender: alice@contoso.example\r\n'
    printf 'Subject: Q3 figures, draft {n}\r\n'
    printf 'Message-Id: <orig-{n}@contoso.example>\r\n'
    printf 'To: bob@contoso.example\r\n'
    printf 'Cc: carol@contoso.example\r\n'
    printf 'Bcc: dave@contoso.example\r\n\r\n'
    printf -- '--%s\r\nContent-Type: message/rfc822\r\n\r\n' "$b"
    printf 'From: Alice Example <alice@contoso.example>\r\n'
    printf 'To: Bob Example <bob@contoso.example>\r\n'
    printf 'Cc: Carol Example <carol@contoso.example>\r\n'
    printf 'Subject: Q3 figures, draft {n}\r\n'
    printf 'Date: %s\r\n' "$date"
    printf 'Message-ID: <orig-{n}@contoso.example>\r\n'
    printf 'MIME-Version: 1.0\r\n'
    printf 'Content-Type: multipart/mixed; boundary="%s"\r\n\r\n' "$ib"
    printf -- '--%s\r\nContent-Type: text/plain; charset="us-ascii"\r\n\r\n' "$ib"
    local i
    for i in $(seq 12); do
      printf 'Hi Bob, Carol - line %02d of the note: the attached file has the Q3 figures;\r\n' "$i"
      printf 'please check the totals against the ledger before Friday. Thanks, Alice\r\n'
    done
    printf '\r\n--%s\r\nContent-Type: application/octet-stream; name="q3-figures.xlsx"\r\n' "$ib"
    printf 'Content-Disposition: attachment; filename="q3-figures.xlsx"\r\n'
    printf 'Content-Transfer-Encoding: base64\r\n\r\n'
  }
  tail_part() {
    printf -- '--%s--\r\n' "$ib"
    printf '\r\n--%s--\r\n' "$b"
  }
  local fixed lines
  fixed=$(( $(head_part | wc -c) + $(tail_part | wc -c) ))
  lines=$(( (target - fixed) / 78 )); [ "$lines" -gt 0 ] || lines=1
  { head_part
    # lines of 76 base64 characters (57 random bytes each) + CRLF
    head -c $(( lines * 57 )) /dev/urandom | base64 -w 76 | sed 's/$/\r/'
    tail_part
  } >"$out"
}
make_report "$TEMPLATE" "$REPORT_SIZE"
TEMPLATE_BYTES=$(wc -c <"$TEMPLATE")
sed -n '1,/^Content-Transfer-Encoding: base64/p' "$TEMPLATE" | tr -d '\r' >"$WORK/res/journal-report-template.txt"
echo "[... base64 lines, then the closing boundaries; $TEMPLATE_BYTES bytes in all before {n} is replaced]" \
  >>"$WORK/res/journal-report-template.txt"
log "journal report template: $TEMPLATE_BYTES bytes"

# ------------------------------------------------------------------ journalgate A and B
jg_start() { # NAME WITH_USERS(0|1)
  local name=$1 users=$2 d="$WORK/$1" port out u
  JG_DIR[$name]=$d
  mkdir -p "$d/data"
  port=$(free_port); JG_SMTP[$name]=$port
  jg_config data_dir="$d/data" smtp="$port" journal_sources=127.0.0.0/8 >"$d/journalgate.toml"
  cp "$d/journalgate.toml" "$WORK/res/journalgate-$name.toml"
  if [ "$users" = 1 ]; then
    log "$name: adding 5 archive users, 1 auditor and the recovery key"
    for u in $USERS; do
      run_logged "$JG" --config "$d/journalgate.toml" user add "$u@contoso.example" --json >>"$d/users.json" </dev/null \
        || { WHY[$name]="user add failed"; return 1; }
    done
    run_logged "$JG" --config "$d/journalgate.toml" user add "$AUDITOR" --auditor --json >>"$d/users.json" </dev/null \
      || { WHY[$name]="user add --auditor failed"; return 1; }
    run_logged "$JG" --config "$d/journalgate.toml" archive recovery init --out "$d/recovery" --json >"$d/recovery.json" </dev/null \
      || { WHY[$name]="archive recovery init failed"; return 1; }
  fi
  log "starting journalgate $name (smtp $port)"
  jg_serve "$d/journalgate.toml" "$d"
  JG_PID[$name]=$!
  if ! jg_wait_ready "$d" "${JG_PID[$name]}"; then
    log "journalgate $name did not become ready:"; tail -20 "$d/stderr" >&2
    WHY[$name]="did not start"; return 1
  fi
}
jg_cli() { # NAME ARGS... (not logged: polling)
  local name=$1; shift
  "$JG" --config "${JG_DIR[$name]}/journalgate.toml" "$@" </dev/null
}
jg_mailbox() { # NAME LABEL -> prints the mailbox address
  local out addr
  out=$(run_logged "$JG" --config "${JG_DIR[$1]}/journalgate.toml" mailbox create --name "bench-$2" --json </dev/null) || true
  addr=$(printf '%s' "$out" | sed -n 's/.*"address":"\([^"]*\)".*/\1/p')
  [ -n "$addr" ] || { log "mailbox create failed: $out"; return 1; }
  printf '%s\n' "$addr"
}
# archive stats of NAME into FILE; echo "pending items"
archive_stats() {
  jg_cli "$1" archive stats --json >"$2" 2>>"$WORK/stats.err" || true
  echo "$(jget "$2" pending) $(jget "$2" items)"
}
intake_count() { # DIR -> number of intake files waiting (<unix>.<32 hex>.age)
  find "$1" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9]+\.[0-9a-f]{32}\.age' 2>/dev/null | wc -l
}
# Background: every 0.5 s, "waiting-files  seconds-since-the-oldest-one-arrived" (from
# the intake file names, whole seconds).
intake_sampler() { # DIR OUT
  set +e
  while :; do
    find "$1" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9]+\.[0-9a-f]{32}\.age' -printf '%f\n' 2>/dev/null |
      awk -F. -v now="$(date +%s)" '{ n++; if (min == "" || $1 < min) min = $1 } END { printf "%d %d\n", n, (n ? now - min : 0) }' >>"$2"
    sleep 0.5
  done
}

for s in A B; do
  users=0; [ "$s" = B ] && users=1
  jg_start "$s" "$users" || true
done
jg_on() { [ -z "${WHY[$1]:-}" ]; }

# ------------------------------------------------------------------ C. Postfix + Dovecot
PF_MASTER="" DC_MASTER=""
if ! command -v postfix >/dev/null || ! command -v dovecot >/dev/null; then
  WHY[C]="postfix/dovecot not installed"
fi
if jg_on C; then
  PF_SMTP=$(free_port)
  PF_DIR="$WORK/postfix"; DC="$WORK/dovecot"
  mkdir -p "$PF_DIR/etc" "$PF_DIR/queue" "$PF_DIR/data" "$DC/run" "$DC/state" "$DC/home"
  chown postfix:postfix "$PF_DIR/data"
  chown nobody:nogroup "$DC/home"
  postfix_conf "$PF_DIR" "$PF_SMTP" "$DC/run/lmtp"
  {
    echo "# private benchmark instance (dovecot -c this file): nothing from /etc/dovecot is read"
    dovecot_conf "$DC" instance=jgingest protocols=lmtp password=benchpass fsync=always
    cat <<EOF
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
  log "starting dovecot (lmtp) and postfix (smtp $PF_SMTP)"
  run_logged dovecot -c "$DC/dovecot.conf" >"$DC/start.log" 2>&1 </dev/null || { cat "$DC/start.log" >&2; WHY[C]="dovecot did not start"; }
  if jg_on C; then
    run_logged postfix -c "$PF_DIR/etc" start >"$PF_DIR/start.log" 2>&1 </dev/null || { cat "$PF_DIR/start.log" "$PF_DIR/maillog" >&2; WHY[C]="postfix did not start"; }
  fi
  for _ in $(seq 100); do
    [ -f "$PF_DIR/queue/pid/master.pid" ] && [ -f "$DC_PIDFILE" ] && [ -S "$DC/run/lmtp" ] \
      && ss -Htln "sport = :$PF_SMTP" | grep -q . && break
    sleep 0.1
  done
  PF_MASTER=$(tr -dc 0-9 <"$PF_DIR/queue/pid/master.pid" 2>/dev/null || true)
  DC_MASTER=$(tr -dc 0-9 <"$DC_PIDFILE" 2>/dev/null || true)
  if jg_on C && { [ -z "$PF_MASTER" ] || [ -z "$DC_MASTER" ]; }; then
    WHY[C]="postfix/dovecot did not start"
  fi
fi

# ------------------------------------------------------------------ cases
# send NAME ADDR TO COUNT CONC COUNTER_START [MAILDIR]: loadgen with the report template
send() {
  local name=$1 addr=$2 to=$3 count=$4 conc=$5 first=$6 maildir=${7:-}
  local extra=()
  [ -n "$maildir" ] && extra=(--wait-maildir "$maildir")
  log "case $name: $count journal reports, concurrency $conc -> $addr"
  run_logged timeout $((CASE_TIMEOUT + 120)) "$LG" smtp --addr "$addr" --to "$to" --count "$count" \
    --message-file "$TEMPLATE" --counter-start "$first" --concurrency "$conc" --timeout "$CASE_TIMEOUT" "${extra[@]}" \
    >"$WORK/res/$name.json" 2>"$WORK/res/$name.err" || true
  cat "$WORK/res/$name.json" >&2
}

# wait_archive NAME CASE EXPECTED_ITEMS: after a case on B, wait until the intake is empty
# (-> CASE.lag, seconds after the last 250) and `archive stats` shows pending 0 and the
# expected number of items (-> CASE.stats.txt). Returns 1 on timeout.
wait_archive() {
  local name=$1 c=$2 expected=$3 intake="${JG_DIR[$1]}/data/archive/intake" deadline t_empty last pi p i
  deadline=$(( $(date +%s) + CASE_TIMEOUT ))
  if [ -d "$intake" ]; then
    while [ "$(intake_count "$intake")" != 0 ]; do
      [ "$(date +%s)" -lt "$deadline" ] || { log "$c: the archive intake did not drain in ${CASE_TIMEOUT}s"; return 1; }
      sleep 0.05
    done
  else
    # no intake folder where this script expects it: `archive stats` says when it is empty
    log "$c: no $intake; polling archive stats for the lag"
    while pi=$(archive_stats "$name" "$WORK/res/$c.stats.txt"); [ "${pi% *}" != 0 ]; do
      [ "$(date +%s)" -lt "$deadline" ] || { log "$c: the archive intake did not drain in ${CASE_TIMEOUT}s"; return 1; }
      sleep 0.1
    done
  fi
  t_empty=$(now)
  last=$(jget "$WORK/res/$c.json" last_250_unix)
  awk -v a="$t_empty" -v b="${last:-$t_empty}" 'BEGIN{ d = a - b; if (d < 0) d = 0; printf "%.2f\n", d }' >"$WORK/res/$c.lag"
  while :; do
    pi=$(archive_stats "$name" "$WORK/res/$c.stats.txt"); p=${pi% *}; i=${pi#* }
    [ "$p" = 0 ] && [ -n "$i" ] && [ "$i" -ge "$expected" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || { log "$c: archive stats: pending ${p:-?}, items ${i:-?} (expected $expected)"; return 1; }
    sleep 0.2
  done
  log "$c: archived, intake empty $(cat "$WORK/res/$c.lag") s after the last 250; items $i"
}

# Warm-up (20 reports each): checks that each system takes the reports (and for B that
# the archive files them, how many items one report makes).
ITEMS_PER_REPORT=1
for s in A B; do
  jg_on "$s" || continue
  addr=$(jg_mailbox "$s" warm) || { WHY[$s]="mailbox create failed"; continue; }
  send "$s-warm" "127.0.0.1:${JG_SMTP[$s]}" "$addr" "$WARM" 2 0
  if [ "$(jget "$WORK/res/$s-warm.json" messages)" != "$WARM" ]; then
    log "journalgate $s did not accept the warm-up reports:"; tail -20 "${JG_DIR[$s]}/stderr" >&2
    WHY[$s]="warm-up failed"; continue
  fi
  if [ "$s" = B ]; then
    if wait_archive B B-warm "$WARM"; then
      items=$(jget "$WORK/res/B-warm.stats.txt" items)
      # every report names its original once: one item each (envelopes are not items)
      ITEMS_PER_REPORT=$(( ${items:-0} / WARM ))
      if [ "$ITEMS_PER_REPORT" -lt 1 ] || [ $(( ITEMS_PER_REPORT * WARM )) != "${items:-0}" ]; then
        log "B: $WARM warm-up reports gave ${items:-0} archive items; expected a multiple of $WARM"
        WHY[B]="archive does not file the reports"
      else
        log "B: one report -> $ITEMS_PER_REPORT archive item(s); journal reports counted: $(jget "$WORK/res/B-warm.stats.txt" journal_reports)"
      fi
    else
      WHY[B]="archive did not drain the warm-up"
    fi
  fi
done
if jg_on C; then
  send C-warm "127.0.0.1:$PF_SMTP" warm@bench.test "$WARM" 2 0 "$DC/home/warm/Maildir"
  if [ "$(jget "$WORK/res/C-warm.json" delivered)" != "$WARM" ]; then
    log "Postfix -> Dovecot delivery does not work:"; tail -20 "$PF_DIR/maillog" "$DC/dovecot.log" >&2
    WHY[C]="delivery failed"
  fi
fi

# CPU ticks of system S's server processes
ticks() {
  case "$1" in
    A|B) tree_cpu_ticks "${JG_PID[$1]}" ;;
    C) tree_cpu_ticks "$PF_MASTER" "$DC_MASTER" ;;
  esac
}
cpu_note() { # CASE T0 T1 MESSAGES -> CASE.cpu: "ms-per-message cpu-seconds"
  awk -v t0="$2" -v t1="$3" -v n="$4" -v hz="$HZ" 'BEGIN{ s = (t1 - t0) / hz; printf "%.3f %.2f\n", (n > 0 ? s * 1000 / n : 0), s }' >"$WORK/res/$1.cpu"
}

ci=0
for c in $CONCS; do
  ci=$((ci + 1))
  first=$(( ci * 1000000 ))     # counters: unique Message-IDs in every run
  for s in A B C; do
    jg_on "$s" || continue
    name="$s-c$c"
    check_budget "$name" || { WHY[$s]="run budget exhausted"; continue; }
    case "$s" in
      A|B)
        addr=$(jg_mailbox "$s" "c$c") || { WHY[$s]="mailbox create failed"; continue; }
        items0=0
        if [ "$s" = B ]; then pi=$(archive_stats B "$WORK/res/$name.before.txt"); items0=${pi#* }; fi
        settle
        note_load "$name"
        if [ "$s" = B ]; then
          : >"$WORK/res/$name.intake"
          intake_sampler "${JG_DIR[B]}/data/archive/intake" "$WORK/res/$name.intake" &
          SAMPLER_PID=$!; BG_PIDS+=("$SAMPLER_PID")
        fi
        t0=$(ticks "$s")
        send "$name" "127.0.0.1:${JG_SMTP[$s]}" "$addr" "$N" "$c" "$first"
        ok=$(jget "$WORK/res/$name.json" messages)
        if [ "$s" = B ]; then
          wait_archive B "$name" $(( ${items0:-0} + ${ok:-0} * ITEMS_PER_REPORT )) || echo timeout >"$WORK/res/$name.archive-timeout"
          kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null || true
          [ -d "${JG_DIR[B]}/data/archive/intake" ] &&
            awk '{ if ($1 > n) n = $1; if ($2 > a) a = $2 } END { printf "%d %d\n", n, a }' "$WORK/res/$name.intake" >"$WORK/res/$name.backlog"
          i1=$(jget "$WORK/res/$name.stats.txt" items)
          echo $(( ${i1:-0} - ${items0:-0} )) >"$WORK/res/$name.items"
        fi
        sleep 1
        t1=$(ticks "$s")
        ;;
      C)
        settle
        note_load "$name"
        t0=$(ticks C)
        send "$name" "127.0.0.1:$PF_SMTP" "c$c@bench.test" "$N" "$c" "$first" "$DC/home/c$c/Maildir"
        ok=$(jget "$WORK/res/$name.json" delivered)
        sleep 1
        t1=$(ticks C)
        ;;
    esac
    cpu_note "$name" "$t0" "$t1" "${ok:-0}"
    log "$name: CPU $(cut -d' ' -f2 "$WORK/res/$name.cpu") s = $(cut -d' ' -f1 "$WORK/res/$name.cpu") ms per message"
  done
done

# ------------------------------------------------------------------ stop, logs
for s in A B; do
  [ -n "${JG_DIR[$s]:-}" ] || continue
  grep -iE 'error|panic' "${JG_DIR[$s]}/stderr" 2>/dev/null | head -10 >"$WORK/res/$s-errors.txt" || true
  jg_stop "$s"
done
if [ -n "$PF_DIR" ]; then
  grep -E 'status=(deferred|bounced)|warning|fatal|panic' "$PF_DIR/maillog" 2>/dev/null | head -10 >"$WORK/res/C-errors.txt" || true
  grep -E 'Error|Fatal|Panic' "$DC/dovecot.log" 2>/dev/null | head -10 >>"$WORK/res/C-errors.txt" || true
  [ -f "$PF_DIR/queue/pid/master.pid" ] && { postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1 </dev/null || true; }
fi
kill_dovecot || true

# ------------------------------------------------------------------ report
R="$WORK/res"
rate() { # CASE -> msg/s (journalgate: to the last 250; Postfix + Dovecot: delivered)
  local f="$R/$1.json" k=msgs_per_s
  [ "${1%%-*}" = C ] && k=delivered_msgs_per_s
  [ -s "$f" ] && [ -n "$(jget "$f" "$k")" ] || { echo ""; return; }
  jget "$f" "$k"
}
cell_rate() { local r; r=$(rate "$1"); [ -n "$r" ] && human_n "$(fmt0 "$r")" || echo "–"; }
cell_cpu() { [ -s "$R/$1.cpu" ] && awk '{printf "%.2f", $1}' "$R/$1.cpu" || echo "–"; }
cell_lag() { if [ -s "$R/$1.lag" ]; then awk '{printf "%.1f", $1}' "$R/$1.lag"; elif [ -f "$R/$1.archive-timeout" ]; then echo "timeout"; else echo "–"; fi; }
cell_items() { [ -s "$R/$1.items" ] && human_n "$(cat "$R/$1.items")" || echo "–"; }
note_for() { # SYSTEM
  local s=$1 c f parts=() fl
  for c in $CONCS; do
    f="$R/$s-c$c.json"; [ -s "$f" ] || continue
    fl=$(jget "$f" failures)
    [ "${fl:-0}" != 0 ] && parts+=("C=$c: ${fl} not accepted")
    if [ "$s" = C ]; then
      parts+=("C=$c: accepted $(human_n "$(fmt0 "$(jget "$f" msgs_per_s)")") msg/s, delivered $(awk -v a="$(jget "$f" delivered_seconds)" -v b="$(jget "$f" seconds)" 'BEGIN{printf "%.1f", a-b}') s after the last 250")
    fi
    if [ "$s" = B ] && [ -s "$R/$s-c$c.backlog" ]; then
      parts+=("C=$c: intake backlog peak $(cut -d' ' -f1 "$R/$s-c$c.backlog") reports, oldest $(cut -d' ' -f2 "$R/$s-c$c.backlog") s")
    fi
  done
  [ -n "${WHY[$s]:-}" ] && parts+=("${WHY[$s]}")
  local IFS=';'; echo "${parts[*]:-}" | sed 's/;/; /g'
}
row() { # SYSTEM LABEL
  local s=$1 label=$2
  printf '| %s | **%s** | **%s** | %s | %s | %s / %s | %s / %s | %s |\n' "$label" \
    "$(cell_rate "$s-c1")" "$(cell_rate "$s-c32")" "$(cell_cpu "$s-c1")" "$(cell_cpu "$s-c32")" \
    "$(cell_lag "$s-c1")" "$(cell_lag "$s-c32")" "$(cell_items "$s-c1")" "$(cell_items "$s-c32")" "$(note_for "$s")"
}
LABEL_A="journalgate, no archive users"
LABEL_B="journalgate, archive on + recovery key (5 users + auditor)"
LABEL_C="Postfix + Dovecot (LMTP → Maildir, fsync on)"
TABLE="$WORK/table.md"
{
  echo "| System | C=1 msg/s | C=32 msg/s | CPU ms/msg C=1 | CPU ms/msg C=32 | Archive lag s (C=1 / C=32) | Items archived (C=1 / C=32) | Note |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  row A "$LABEL_A"
  row B "$LABEL_B"
  row C "$LABEL_C"
} >"$TABLE"

TARGETS="$WORK/targets.md"
ratio() { # CASE_X CASE_Y -> x/y or empty
  local x y; x=$(rate "$1"); y=$(rate "$2")
  [ -n "$x" ] && [ -n "$y" ] && awk -v a="$x" -v b="$y" 'BEGIN{ if (b > 0) printf "%.2f", a / b }'
}
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN{ ok = (op == ">=") ? (v >= t) : (v < t); print ok ? "met" : "MISSED" }'; }
{
  for s in A B; do
    lbl=$LABEL_A; [ "$s" = B ] && lbl=$LABEL_B
    r1=$(ratio "$s-c1" C-c1); r32=$(ratio "$s-c32" C-c32)
    cpu_r=""
    for c in $CONCS; do
      if [ -s "$R/$s-c$c.cpu" ] && [ -s "$R/C-c$c.cpu" ]; then
        cpu_r+="${cpu_r:+, }C=$c $(awk -v a="$(cut -d' ' -f1 "$R/$s-c$c.cpu")" -v b="$(cut -d' ' -f1 "$R/C-c$c.cpu")" 'BEGIN{ if (b > 0) printf "%.2f×", a / b; else printf "–" }')"
      fi
    done
    echo "- $lbl vs Postfix + Dovecot: C=1 **${r1:-–}×**, C=32 **${r32:-–}×** msg/s; CPU per message ${cpu_r:-–}"
  done
  r1=$(ratio B-c1 C-c1); r32=$(ratio B-c32 C-c32)
  [ -n "$r1" ] && echo "- Target, archive on: C=1 ≥ 2.5× Postfix + Dovecot: ${r1}× **$(verdict "$r1" 2.5 '>=')**" \
    || echo "- Target, archive on: C=1 ≥ 2.5× Postfix + Dovecot: not measured"
  [ -n "$r32" ] && echo "- Target, archive on: C=32 ≥ 5× Postfix + Dovecot: ${r32}× **$(verdict "$r32" 5 '>=')**" \
    || echo "- Target, archive on: C=32 ≥ 5× Postfix + Dovecot: not measured"
  for c in $CONCS; do
    if [ -s "$R/B-c$c.cpu" ]; then
      v=$(cut -d' ' -f1 "$R/B-c$c.cpu")
      echo "- Target, archive on: CPU < 1.2 ms per message (archive worker included) at C=$c: $(awk -v x="$v" 'BEGIN{printf "%.2f", x}') ms **$(verdict "$v" 1.2 '<')**"
    fi
  done
  for c in $CONCS; do
    if [ -s "$R/B-c$c.lag" ]; then
      v=$(cat "$R/B-c$c.lag"); bl="–"; [ -s "$R/B-c$c.backlog" ] && bl=$(cut -d' ' -f2 "$R/B-c$c.backlog")
      echo "- Archive behind SMTP at C=$c: intake empty $v s after the last 250; oldest waiting report during the run ${bl} s (whole seconds) (\"a few seconds\", read here as ≤ 5 s: **$(verdict "$v" 5.0001 '<')**)"
    fi
  done
} >"$TARGETS"

DATE=$(date +%F)
SUFFIX="" QNOTE="" QARG=""
if [ "$QUICK" = 1 ]; then SUFFIX="-quick" QNOTE=" (--quick)" QARG=" --quick"; fi
OUT=$(results_file "ingest-$DATE$SUFFIX.md")
{
  echo "# journalgate ingest benchmark with the archive on, $(date -u +'%F %H:%M UTC')$QNOTE"
  echo
  echo "Hardware: $HW_LINE"
  echo "Filesystem: $FS_NOTE"
  echo
  echo "Versions: journalgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no commit)')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/'), $(postconf -d -h mail_version 2>/dev/null | sed 's/^/Postfix /'), Dovecot $(dovecot --version 2>/dev/null | cut -d' ' -f1), $(rustc --version 2>/dev/null)"
  echo
  MEAN=$(for f in "$R"/[ABC]-c*.json; do jget "$f" size; done | awk '$1 > 0 { s += $1; n++ } END { if (n) printf "%.0f", s / n }')
  echo "Command: \`bench/ingest.sh$QARG\` — $(human_n "$N") Exchange journal reports of $(human_n "${MEAN:-$TEMPLATE_BYTES}") bytes each (an original of"
  echo "about 18 KB inside; report part: sender alice, To bob, Cc carol, Bcc dave) per case, one run each, one mailbox / Maildir user per case."
  echo
  cat "$TABLE"
  echo
  echo "msg/s: journalgate from the first connection to the last 250 after DATA (durable); Postfix + Dovecot until the last"
  echo "message is in the Dovecot Maildir (fsync on). CPU ms/msg: the server's utime+stime over the case (from just before"
  echo "sending until done, plus 1 s), divided by the messages accepted (delivered for Postfix + Dovecot): journalgate is one"
  echo "process (all threads); Postfix + Dovecot is both masters, their live descendants and their exited children"
  echo "(cutime/cstime). For the archive row \"done\" means archived: the intake is empty and \`journalgate archive stats --json\`"
  echo "shows pending 0 and the expected item count, so the archive worker's CPU is in the figure. Archive lag: the last 250"
  echo "until the intake is empty. Kernel writeback threads are not counted for either side. Client: \`loadgen smtp\`"
  echo "(pipelining, one connection per concurrency slot)."
  echo
  echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "## Ratios and targets"
  echo
  cat "$TARGETS"
  echo
  report_errors A "$R/A-errors.txt" B "$R/B-errors.txt" C "$R/C-errors.txt"
  echo "## Archive stats after each case (system B)"
  echo
  echo '```'
  for f in "$R"/B-*.stats.txt; do [ -s "$f" ] && printf '%s: %s\n' "$(basename "$f" .stats.txt)" "$(cat "$f")"; done
  echo '```'
  echo
  echo "## CPU per case (ms per message, CPU seconds)"
  echo
  echo '```'
  for f in "$R"/*.cpu; do [ -s "$f" ] && printf '%s: %s\n' "$(basename "$f" .cpu)" "$(cat "$f")"; done
  echo '```'
  echo
  report_appendix journal-report-template.txt journalgate-A.toml journalgate-B.toml postfix-main.cf postfix-master.cf dovecot.conf
} >"$OUT"

print_summary "$TABLE" "$TARGETS"
log "results written to $OUT (total $(( $(date +%s) - RUN_START )) s)"
