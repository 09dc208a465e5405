#!/usr/bin/env bash
# journalgate IMAP benchmark (issue 3), against a private Dovecot (Debian package,
# Maildir, mail_fsync = always), both in the same run, on loopback only.
#
#   bench/imap.sh            full run: archiver job on 10,000 x 20 KB; SELECT on 100,000 messages
#   bench/imap.sh --quick    sanity run: 1,000 x 20 KB; SELECT on 10,000 messages
#
# Cases, each on journalgate and then at once on Dovecot:
#  a. archiver job: fill N x 20 KB (journalgate: loadgen smtp, C=32; Dovecot: loadgen smtp
#     --lmtp into Dovecot's LMTP, C=32), then `loadgen imap --delete`: LOGIN, SELECT,
#     UID SEARCH ALL, UID FETCH (UID BODY.PEEK[]) in batches of 500, UID STORE
#     +FLAGS.SILENT (\Deleted) + UID EXPUNGE per batch, LOGOUT; then a check that the
#     INBOX is empty.
#  b. SELECT latency on a large INBOX: fill M x 20 KB (journalgate: loadgen smtp, C=32;
#     Dovecot: `loadgen maildir` writes the same messages straight into Maildir/new, which
#     Dovecot indexes at the first SELECT), then `loadgen imap-select --repeat 5`: first
#     SELECT and median of the later ones, one session. journalgate is then restarted and
#     measured once more (first SELECT of a fresh process).
#
# Needs root (apt install, Dovecot privilege drop). Switches: --quick, --no-install,
# --no-build (use the binaries in target/release), --keep (keep the temp dir).
# BENCH_BUDGET_SECS (default 720) bounds the run; later cases are skipped.
# Prints a markdown table and writes it to bench/results/imap-results-<date>[-quick].md.
set -euo pipefail

QUICK=0 INSTALL=1 BUILD=1 KEEP=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  N=1000 SELN=10000 FILL_TIMEOUT=120 CASE_TIMEOUT=120
else
  N=10000 SELN=100000 FILL_TIMEOUT=300 CASE_TIMEOUT=240
fi
SIZE=20000
CONC=32
BATCH=500
REPEAT=5

# bench_init, log, run_logged, check_budget, free_port, jget, fmt*, human_n, samplers,
# apt_install, jg_config, jg_serve, stop_jg, dovecot_conf, report parts
. "$(dirname "$0")/lib.sh"
bench_init imap-bench 720

[ "$(id -u)" = 0 ] || { echo "bench/imap.sh needs root (Dovecot drops privileges to nobody)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/jg-imapbench.XXXXXX)
chmod 755 "$WORK"            # the dovecot / nobody users must traverse it
mkdir -p "$WORK/res"
CMDS="$WORK/commands.txt"
: >"$CMDS"

JG_PID=""

on_exit() { # (bench_exit, before WORK is removed)
  stop_jg
  kill_dovecot
}
bench_traps

# like run_logged, but with the value of --pass masked in the log
run_masked() {
  local masked=() prev=""
  for x in "$@"; do
    if [ "$prev" = --pass ]; then masked+=("'***'"); else masked+=("$x"); fi
    prev=$x
  done
  printf '%s\n' "${masked[*]}" >>"$CMDS"
  "$@"
}

settle() { timeout 180 sync || true; sleep 2; }

# ------------------------------------------------------------------ setup
log "work dir $WORK"
probe_machine

if [ "$INSTALL" = 1 ]; then
  if ! command -v dovecot >/dev/null || [ ! -x /usr/lib/dovecot/imap ] || [ ! -x /usr/lib/dovecot/lmtp ]; then
    log "installing dovecot-core dovecot-imapd dovecot-lmtpd (Debian packages)"
    apt_install dovecot-core dovecot-imapd dovecot-lmtpd
  fi
fi
command -v dovecot >/dev/null && [ -x /usr/lib/dovecot/imap ] && [ -x /usr/lib/dovecot/lmtp ] \
  || { echo "dovecot with imap and lmtp is needed (apt install dovecot-imapd dovecot-lmtpd)" >&2; exit 1; }

if [ "$BUILD" = 1 ]; then
  log "building (release)"
  run_logged timeout 1800 cargo build --release --example loadgen --bin journalgate >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; exit 1; }
fi
[ -x "$JG" ] && [ -x "$LG" ] || { echo "missing $JG or $LG" >&2; exit 1; }
# version of what is measured (taken now: the tree may change during the run)
JG_VERSION="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no commit)')$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (src modified)')"
# private copies, so that a concurrent cargo build cannot swap them during the run
mkdir -p "$WORK/bin"
cp "$JG" "$WORK/bin/journalgate"; cp "$LG" "$WORK/bin/loadgen"
JG="$WORK/bin/journalgate" LG="$WORK/bin/loadgen"
# the measured run starts after the build
RUN_START=$(date +%s)

# ------------------------------------------------------------------ journalgate
JGD="$WORK/journalgate"; mkdir -p "$JGD/data"
JG_SMTP=$(free_port) JG_IMAPS=$(free_port)
jg_config data_dir="$JGD/data" smtp="$JG_SMTP" imap_tls="$JG_IMAPS" >"$JGD/journalgate.toml"
cp "$JGD/journalgate.toml" "$WORK/res/journalgate.toml"
start_jg() {
  log "starting journalgate (smtp $JG_SMTP, imaps $JG_IMAPS)"
  jg_serve "$JGD/journalgate.toml" "$JGD"
  JG_PID=$!
  jg_wait_ready "$JGD" "$JG_PID" 60 && return 0
  log "journalgate did not become ready:"; tail -20 "$JGD/stderr" >&2
  return 1
}
JG_START_T0=$(date +%s.%N)
start_jg
JG_START_FIRST=$(awk -v a="$JG_START_T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')

declare -A JG_MBX_ADDR JG_MBX_ID JG_MBX_PASS
jg_mailbox() { # NAME
  local out
  out=$(run_logged timeout 60 "$JG" --config "$JGD/journalgate.toml" mailbox create --name "imapbench-$1" --json </dev/null) || true
  JG_MBX_ID[$1]=$(printf '%s' "$out" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
  JG_MBX_ADDR[$1]=$(printf '%s' "$out" | sed -n 's/.*"address":"\([^"]*\)".*/\1/p')
  JG_MBX_PASS[$1]=$(printf '%s' "$out" | sed -n 's/.*"password":"\([^"]*\)".*/\1/p')
  [ -n "${JG_MBX_ADDR[$1]}" ] || { log "mailbox create failed: $out"; return 1; }
}

# ------------------------------------------------------------------ Dovecot
DC="$WORK/dovecot"
mkdir -p "$DC/run" "$DC/state" "$DC/home"
chown nobody:nogroup "$DC/home"
DC_IMAPS=$(free_port) DC_LMTP=$(free_port)
dovecot_cert "$DC"
{
  echo "# private benchmark instance (dovecot -c this file): nothing from /etc/dovecot is read"
  dovecot_conf "$DC" instance=jgimapbench protocols="imap lmtp" password=benchpass ssl=required fsync=always
  cat <<EOF
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $DC_IMAPS
    ssl = yes
  }
}
service pop3-login {
  inet_listener pop3 {
    port = 0
  }
  inet_listener pop3s {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $DC_LMTP
  }
  unix_listener lmtp {
    mode = 0600
  }
}
EOF
} >"$DC/dovecot.conf"
cp "$DC/dovecot.conf" "$WORK/res/dovecot.conf"
log "starting dovecot (imaps $DC_IMAPS, lmtp $DC_LMTP)"
start_dovecot "$DC" "$DC_IMAPS" "$DC_LMTP" || { log "dovecot did not start"; exit 1; }

# ------------------------------------------------------------------ case helpers
fill_smtp() { # NAME ADDR TO COUNT [extra loadgen args...]
  local name=$1 addr=$2 to=$3 count=$4; shift 4
  log "fill $name: $count x $SIZE B, concurrency $CONC -> $addr $*"
  note_load "$name"
  run_logged timeout $((FILL_TIMEOUT + 90)) "$LG" smtp --addr "$addr" --to "$to" --count "$count" \
    --size "$SIZE" --concurrency "$CONC" --timeout "$FILL_TIMEOUT" "$@" \
    >"$WORK/res/$name.json" 2>"$WORK/res/$name.err" || true
  cat "$WORK/res/$name.json" >&2
}
imap_job() { # NAME ADDR USER PASS
  local name=$1 addr=$2 user=$3 pass=$4
  log "case $name: IMAP archiver job on $user via $addr (imaps)"
  note_load "$name"
  run_masked timeout "$CASE_TIMEOUT" "$LG" imap --addr "$addr" --tls --user "$user" --pass "$pass" \
    --batch "$BATCH" --delete >"$WORK/res/$name.json" 2>"$WORK/res/$name.err" || true
  cat "$WORK/res/$name.json" >&2
}
imap_select() { # NAME ADDR USER PASS REPEAT
  local name=$1 addr=$2 user=$3 pass=$4 rep=$5
  log "case $name: SELECT INBOX x $rep on $user via $addr (imaps)"
  note_load "$name"
  run_masked timeout "$CASE_TIMEOUT" "$LG" imap-select --addr "$addr" --tls --user "$user" --pass "$pass" \
    --repeat "$rep" >"$WORK/res/$name.json" 2>"$WORK/res/$name.err" || true
  cat "$WORK/res/$name.json" >&2
}

# warm-up: one small delivery + one IMAP job on each, so that neither pays a cold start in case a
jg_mailbox warm
fill_smtp jg-warm "127.0.0.1:$JG_SMTP" "${JG_MBX_ADDR[warm]}" 20
fill_smtp dc-warm "127.0.0.1:$DC_LMTP" warm@bench.test 20 --lmtp
imap_job jg-warm-imap "127.0.0.1:$JG_IMAPS" "${JG_MBX_ID[warm]}" "${JG_MBX_PASS[warm]}"
imap_job dc-warm-imap "127.0.0.1:$DC_IMAPS" warm benchpass
if [ "$(jget "$WORK/res/jg-warm-imap.json" verified)" != 20 ] || [ "$(jget "$WORK/res/dc-warm-imap.json" verified)" != 20 ]; then
  log "warm-up failed (see above); logs:"; tail -5 "$JGD/stderr" "$DC/dovecot.log" >&2 || true
  exit 1
fi

# ------------------------------------------------------------------ a. archiver job
if check_budget "archiver fill"; then
  jg_mailbox arch
  settle
  start_sampler jg-fill-arch "$JG_PID"
  fill_smtp jg-fill-arch "127.0.0.1:$JG_SMTP" "${JG_MBX_ADDR[arch]}" "$N"
  stop_sampler jg-fill-arch
  settle
  start_sampler dc-fill-arch "$DC_MASTER"
  fill_smtp dc-fill-arch "127.0.0.1:$DC_LMTP" arch@bench.test "$N" --lmtp --wait-maildir "$DC/home/arch/Maildir"
  stop_sampler dc-fill-arch
fi
if check_budget "archiver IMAP"; then
  settle
  start_sampler jg-imap-arch "$JG_PID"
  imap_job jg-imap-arch "127.0.0.1:$JG_IMAPS" "${JG_MBX_ID[arch]}" "${JG_MBX_PASS[arch]}"
  stop_sampler jg-imap-arch
  settle
  start_sampler dc-imap-arch "$DC_MASTER"
  imap_job dc-imap-arch "127.0.0.1:$DC_IMAPS" arch benchpass
  stop_sampler dc-imap-arch
  # afterwards the INBOX must be empty
  imap_select jg-arch-after "127.0.0.1:$JG_IMAPS" "${JG_MBX_ID[arch]}" "${JG_MBX_PASS[arch]}" 1
  imap_select dc-arch-after "127.0.0.1:$DC_IMAPS" arch benchpass 1
fi

# ------------------------------------------------------------------ b. SELECT on a large mailbox
if check_budget "SELECT fill"; then
  jg_mailbox sel
  settle
  start_sampler jg-fill-sel "$JG_PID"
  fill_smtp jg-fill-sel "127.0.0.1:$JG_SMTP" "${JG_MBX_ADDR[sel]}" "$SELN"
  stop_sampler jg-fill-sel
  log "fill dc-fill-sel: $SELN x $SIZE B straight into Maildir/new"
  note_load dc-fill-sel
  run_logged timeout "$FILL_TIMEOUT" "$LG" maildir --dir "$DC/home/sel/Maildir" --to sel@bench.test \
    --count "$SELN" --size "$SIZE" >"$WORK/res/dc-fill-sel.json" 2>"$WORK/res/dc-fill-sel.err" || true
  cat "$WORK/res/dc-fill-sel.json" >&2
  run_logged chown -R nobody:nogroup "$DC/home/sel"
fi
if check_budget "SELECT latency"; then
  settle
  start_sampler jg-select "$JG_PID"
  imap_select jg-select "127.0.0.1:$JG_IMAPS" "${JG_MBX_ID[sel]}" "${JG_MBX_PASS[sel]}" "$REPEAT"
  stop_sampler jg-select
  settle
  start_sampler dc-select "$DC_MASTER"
  imap_select dc-select "127.0.0.1:$DC_IMAPS" sel benchpass "$REPEAT"
  stop_sampler dc-select
fi
JG_HWM=$(hwm_mb "$JG_PID")
if check_budget "SELECT after restart"; then
  # journalgate again from a fresh process: the first SELECT without anything cached in it
  stop_jg
  settle
  t0=$(date +%s.%N)
  start_jg
  JG_RESTART=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')
  log "journalgate ready again after ${JG_RESTART} s"
  start_sampler jg-select-restart "$JG_PID"
  imap_select jg-select-restart "127.0.0.1:$JG_IMAPS" "${JG_MBX_ID[sel]}" "${JG_MBX_PASS[sel]}" "$REPEAT"
  stop_sampler jg-select-restart
fi
DC_HWM=$(hwm_mb "$DC_MASTER" $(ps -o pid= --ppid "$DC_MASTER" 2>/dev/null))
grep -iE 'error|panic' "$JGD/stderr" | head -20 >"$WORK/res/jg-errors.txt" || true
grep -E 'Error|Fatal|Panic' "$DC/dovecot.log" | head -20 >"$WORK/res/dc-errors.txt" || true
stop_jg

# ------------------------------------------------------------------ report
R="$WORK/res"
peak_cols() { # peakfile -> "rss | pss"
  if [ -s "$1" ]; then awk '{printf "%s | %s", $1, $2}' "$1"; else printf '– | –'; fi
}
# rate_row SYSTEM CASE JSON PEAK NOTE  (messages, seconds, msg/s, MB/s from JSON)
rate_row() {
  local sys=$1 cs=$2 f=$3 peak=$4 note=${5:-}
  if [ ! -s "$f" ]; then printf '| %s | %s | – | – | – | – | – | – | – | not run |\n' "$sys" "$cs"; return; fi
  local msgs secs rate mbs fail
  msgs=$(jget "$f" messages); secs=$(jget "$f" seconds); rate=$(jget "$f" msgs_per_s); mbs=$(jget "$f" mb_per_s)
  fail=$(jget "$f" failures)
  if [ -z "$rate" ]; then   # maildir writer: no rates in its JSON
    rate=$(awk -v n="$msgs" -v s="$secs" 'BEGIN{ if (s > 0) printf "%.3f", n/s }')
    mbs=$(awk -v b="$(jget "$f" bytes)" -v s="$secs" 'BEGIN{ if (s > 0) printf "%.3f", b/1e6/s }')
  fi
  [ "${fail:-0}" != 0 ] && note="**$fail failures**${note:+; $note}"
  [ -n "$(jget "$f" error)" ] && note="$note; error: $(jget "$f" error)"
  printf '| %s | %s | %s | %s | **%s** | %s | – | %s | %s |\n' "$sys" "$cs" "$(human_n "${msgs:-0}")" "$(fmt1 "$secs")" \
    "$(human_n "$(fmt0 "$rate")")" "$(fmt1 "$mbs")" "$(peak_cols "$peak")" "$note"
}
select_row() { # SYSTEM CASE JSON PEAK NOTE
  local sys=$1 cs=$2 f=$3 peak=$4 note=${5:-}
  if [ ! -s "$f" ]; then printf '| %s | %s | – | – | – | – | – | – | – | not run |\n' "$sys" "$cs"; return; fi
  local all
  all=$(sed -n 's/.*"select_ms":\[\([^]]*\)\].*/\1/p' "$f" | tr ',' ' ')
  note="all SELECTs: ${all:-–} ms; login $(fmt0 "$(jget "$f" login_ms)") ms${note:+; $note}"
  [ "$(jget "$f" failures)" != 0 ] && note="**failed**: $(jget "$f" error); $note"
  printf '| %s | %s | %s | – | – | – | **%s / %s** | %s | %s |\n' "$sys" "$cs" "$(human_n "$(jget "$f" exists)")" \
    "$(fmt1 "$(jget "$f" first_select_ms)")" "$(fmt1 "$(jget "$f" median_select_ms)")" "$(peak_cols "$peak")" "$note"
}
job_note() { # JSON AFTERJSON
  local f=$1 after=$2
  [ -s "$f" ] || return 0
  printf 'login %s ms, SELECT %s ms, UID SEARCH %s ms, FETCH %s s, STORE+EXPUNGE %s s; %s/%s verified, %s expunged; left in INBOX: %s' \
    "$(fmt0 "$(jget "$f" login_ms)")" "$(fmt1 "$(jget "$f" select_ms)")" "$(fmt1 "$(jget "$f" search_ms)")" \
    "$(jget "$f" fetch_seconds)" "$(jget "$f" store_expunge_seconds)" "$(jget "$f" verified)" "$(jget "$f" exists)" \
    "$(jget "$f" expunged)" "$(jget "$after" exists)"
}
NH=$(human_n "$N") SH=$(human_n "$SELN")
TABLE="$WORK/table.md"
{
  echo "| System | Case | Messages | Seconds | msg/s | MB/s | First / median SELECT ms | Peak RSS MB | Peak PSS MB | Note |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
  rate_row journalgate "IMAP archiver job, $NH × 20 KB (batches of $BATCH, delete)" "$R/jg-imap-arch.json" "$R/jg-imap-arch.peak" "$(job_note "$R/jg-imap-arch.json" "$R/jg-arch-after.json")"
  rate_row Dovecot "IMAP archiver job, $NH × 20 KB (batches of $BATCH, delete)" "$R/dc-imap-arch.json" "$R/dc-imap-arch.peak" "$(job_note "$R/dc-imap-arch.json" "$R/dc-arch-after.json")"
  select_row journalgate "SELECT INBOX, $SH messages" "$R/jg-select.json" "$R/jg-select.peak" "same process that took the mail in"
  select_row journalgate "SELECT INBOX, $SH messages, fresh process" "$R/jg-select-restart.json" "$R/jg-select-restart.peak" "after a restart (ready in ${JG_RESTART:-?} s)"
  select_row Dovecot "SELECT INBOX, $SH messages" "$R/dc-select.json" "$R/dc-select.peak" "first SELECT indexes the Maildir (all files in new/)"
  rate_row journalgate "fill for a: SMTP, C=$CONC, $NH × 20 KB" "$R/jg-fill-arch.json" "$R/jg-fill-arch.peak" "durable 250"
  rate_row Dovecot "fill for a: LMTP, C=$CONC, $NH × 20 KB" "$R/dc-fill-arch.json" "$R/dc-fill-arch.peak" "250 after the Maildir save (fsync)"
  rate_row journalgate "fill for b: SMTP, C=$CONC, $SH × 20 KB" "$R/jg-fill-sel.json" "$R/jg-fill-sel.peak" "durable 250"
  rate_row Dovecot "fill for b: files written into Maildir/new" "$R/dc-fill-sel.json" "" "no fsync, not comparable"
} >"$TABLE"

TARGETS="$WORK/targets.md"
cmp_line() { # LABEL JG DC UNIT higher|lower
  local label=$1 a=$2 b=$3 unit=$4 better=$5
  if [ -z "$a" ] || [ -z "$b" ] || [ "$a" = 0 ] || [ "$b" = 0 ]; then echo "- $label: not measured"; return; fi
  awk -v l="$label" -v a="$a" -v b="$b" -v u="$unit" -v hb="$better" 'BEGIN{
    if (hb == "higher") { win = (a > b); r = a / b } else { win = (a < b); r = b / a }
    printf "- %s: journalgate %.1f %s, Dovecot %.1f %s: %s (speed ratio journalgate : Dovecot = %.2f)\n", l, a, u, b, u,
      win ? "**journalgate faster**" : "**Dovecot faster: target MISSED**", r }'
}
{
  cmp_line "archiver job msg/s" "$(jget "$R/jg-imap-arch.json" msgs_per_s)" "$(jget "$R/dc-imap-arch.json" msgs_per_s)" "msg/s" higher
  cmp_line "archiver job MB/s" "$(jget "$R/jg-imap-arch.json" mb_per_s)" "$(jget "$R/dc-imap-arch.json" mb_per_s)" "MB/s" higher
  cmp_line "first SELECT on $SH messages" "$(jget "$R/jg-select.json" first_select_ms)" "$(jget "$R/dc-select.json" first_select_ms)" "ms" lower
  cmp_line "first SELECT on $SH messages, journalgate after restart" "$(jget "$R/jg-select-restart.json" first_select_ms)" "$(jget "$R/dc-select.json" first_select_ms)" "ms" lower
  cmp_line "median later SELECT on $SH messages" "$(jget "$R/jg-select.json" median_select_ms)" "$(jget "$R/dc-select.json" median_select_ms)" "ms" lower
  echo "- journalgate VmHWM (whole run until the restart): ${JG_HWM:-?} MB; Dovecot: sum of VmHWM of the processes alive at the end: ${DC_HWM:-?} MB (imap and lmtp processes that exited are not in it; see the sampled columns)"
  echo "- journalgate start-up: ${JG_START_FIRST:-?} s empty, ${JG_RESTART:-?} s with the $SH-message mailbox"
} >"$TARGETS"

DATE=$(date +%F)
SUFFIX="" QARG=""
[ "$QUICK" = 1 ] && { SUFFIX="-quick"; QARG=" --quick"; }
OUT=$(results_file "imap-results-$DATE$SUFFIX.md")
{
  echo "# journalgate IMAP benchmark results, $(date -u +'%F %H:%M UTC')$QARG"
  echo
  echo "Hardware: $HW_LINE"
  echo
  echo "Versions: journalgate $JG_VERSION, Dovecot $(dovecot --version 2>/dev/null | cut -d' ' -f1), $(rustc --version 2>/dev/null)"
  echo
  echo "Command: \`bench/imap.sh$QARG\`"
  echo
  cat "$TABLE"
  echo
  echo "msg/s and MB/s (MB = 10^6 bytes, bytes as received in the BODY[] literals) are end to end: TCP connect to the"
  echo "answer to LOGOUT, one client session (TLS, LOGIN, SELECT, UID SEARCH ALL, UID FETCH (UID BODY.PEEK[]) per"
  echo "batch of $BATCH, then UID STORE +FLAGS.SILENT (\\Deleted) and UID EXPUNGE for the batch, LOGOUT)."
  echo "SELECT ms: one session, SELECT INBOX $REPEAT times with UNSELECT in between; first / median of the later ones."
  echo "Peak RSS / PSS: highest sum over the server's processes (journalgate: one; Dovecot: master and its children),"
  echo "sampled every 0.25 s during the case."
  echo
  echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "## Targets (journalgate faster than Dovecot on every figure)"
  echo
  cat "$TARGETS"
  echo
  report_errors journalgate "$R/jg-errors.txt" dovecot "$R/dc-errors.txt"
  report_appendix journalgate.toml dovecot.conf
} >"$OUT"

print_summary "$TABLE" "$TARGETS"
log "results written to $OUT (measured part $(( $(date +%s) - RUN_START )) s)"
