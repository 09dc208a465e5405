#!/usr/bin/env bash
# journalgate archive trust benchmark: grant throughput (items/s) on a large archive and
# eDiscovery export throughput (MB/s), with the server's and the CLI's peak memory.
#
#   bench/archive-trust.sh            full run: an archive of 100,000 journal reports
#   bench/archive-trust.sh --quick    sanity run: 5,000 reports
#
# Steps (one journalgate, archive on, on loopback only):
#  1. Build the archive: five archive users (alice, bob, carol, dave, erin @contoso.example),
#     one auditor (audit@contoso.example) and a recovery key (`archive recovery init`), then
#     `journalgate serve` and N Exchange journal reports (~20 KB, the template of
#     bench/ingest.sh: sender alice, To bob, Cc carol, Bcc dave) sent with `loadgen smtp
#     --message-file --concurrency 32`. Done when `archive stats --json` shows pending 0 and
#     items == N (one archived original per report; the one journal-envelope item per report
#     is not counted in "items").
#  2. Grants (through the running server): `user reset-password audit@...` (the auditor's
#     new key opens nothing), then `archive grant audit@... --recovery KEY --json` timed;
#     items/s = (granted + envelopes) / s, messages/s = granted / s; checked: granted == N.
#     The same grant again (everything already readable: the resumable no-op), timed. Then
#     a user: `user reset-password bob@...` and `archive grant bob@... --recovery KEY`.
#  3. Exports (streamed from the server to the CLI, which writes the zip):
#     `archive export --all --format eml`, `--all --format mbox` and `--user bob@...
#     --format eml`, each with --recovery KEY; MB/s = original bytes ("bytes" in the JSON)
#     / s, MB = 10^6 bytes. Then `archive verify-export` of the --all eml zip (checked: ok,
#     proven == N); MB/s over the same original bytes.
#  4. Memory: the server's peak RSS (VmHWM, reset with /proc/PID/clear_refs before each
#     step) and each CLI's peak RSS (`/usr/bin/time -v`, else VmHWM sampled every 0.1 s).
#
# Filesystem: everything runs on a fresh journaled ext4 (a sparse image on a loop device
# with direct I/O, made for the run and removed after it), like bench/ingest.sh; --rootfs
# runs in /tmp instead.
#
# Needs root (loop device, clear_refs). Switches: --quick, --no-build (use the binaries in
# target/release), --keep (keep the temp dir), --rootfs, --reports N (override N).
# BENCH_OP_TIMEOUT (seconds) bounds each step (default 3600, --quick 900).
# Prints a markdown table and writes it to bench/results/archive-trust-<date>[-quick][-nN].md.
# Every step that fails, or whose JSON disagrees with the expected counts, stops the run
# with an error; all processes, mounts, loop devices and temp files are removed on exit.
set -euo pipefail

QUICK=0 BUILD=1 KEEP=0 LOOPFS=1 N_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rootfs) LOOPFS=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --reports) shift; N_ARG=${1:-}; [[ "$N_ARG" =~ ^[1-9][0-9]*$ ]] || { echo "--reports needs a number" >&2; exit 2; } ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  N=5000 OP_TIMEOUT=${BENCH_OP_TIMEOUT:-900}
else
  N=100000 OP_TIMEOUT=${BENCH_OP_TIMEOUT:-3600}
fi
[ -n "$N_ARG" ] && N=$N_ARG
CONC=32
COUNTER_START=1000000  # `{n}` of the first report: unique Message-IDs
REPORT_SIZE=20000      # target size of one journal report (bytes)
USERS="alice bob carol dave erin"
DOMAIN=contoso.example
AUDITOR=audit@$DOMAIN
USER_GRANTED=bob@$DOMAIN  # To on every report: entitled to all N originals

# bench_init, log, run_logged, free_port, jget, fmt*, human_n, hwm_mb, tree_cpu_ticks, the
# scratch filesystem, jg_config, jg_serve, stop_jg, report parts
. "$(dirname "$0")/lib.sh"
bench_init archive-trust

[ "$(id -u)" = 0 ] || { echo "bench/archive-trust.sh needs root (loop device, /proc/PID/clear_refs)" >&2; exit 1; }
GNU_TIME=""
[ -x /usr/bin/time ] && /usr/bin/time -v true >/dev/null 2>&1 && GNU_TIME=/usr/bin/time

WORK=$(mktemp -d /tmp/jg-archive-trust.XXXXXX)
JG_PID="" CUR_PID=""

on_exit() { # (bench_exit, before WORK is removed)
  # a timed command runs in its own process group (timeout's): end the whole group
  if [ -n "$CUR_PID" ]; then
    kill -TERM -- "-$CUR_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$CUR_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$CUR_PID" 2>/dev/null
    wait "$CUR_PID" 2>/dev/null
  fi
  stop_jg
}
bench_traps

if scratch_fs_possible; then
  # sparse; the run needs about 100 KB per report: the gateway mailbox's copy, the archive
  # item, its duplicate-merging copy, the envelope, and two exports on disk at a time
  IMG_GB=$(( N * 200 / 1000000 + 4 ))
  mount_scratch_fs "$IMG_GB"
  FS_NOTE="a fresh journaled ext4 on $LOOP_DEV (direct I/O loop over $LOOP_IMG, ${IMG_GB} GB sparse)"
else
  FS_NOTE=$(rootfs_note)
fi
chmod 700 "$WORK"
mkdir -p "$WORK/res" "$WORK/keys"
R="$WORK/res"
CMDS="$WORK/commands.txt"
: >"$CMDS"

fail() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
settle() { sync; sleep 2; }
# jv FILE KEY: a top-level scalar of a one-object JSON file (jq when installed, else jget)
if command -v jq >/dev/null; then
  jv() { [ -s "$1" ] || return 0; jq -r --arg k "$2" 'if type == "object" and has($k) then .[$k] | tostring else empty end' "$1" 2>/dev/null | head -1 || true; }
else
  jv() { jget "$1" "$2"; }
fi
fmt2() { awk -v x="${1:-0}" 'BEGIN{ printf "%.2f", x }'; }
div() { awk -v a="${1:-0}" -v b="${2:-0}" -v s="${3:-1}" 'BEGIN{ if (b > 0) printf "%.3f", a / s / b; else printf "0" }'; }

# ------------------------------------------------------------------ setup
log "work dir $WORK"
probe_machine

if [ "$BUILD" = 1 ]; then
  log "building (release)"
  if ! run_logged cargo build --release --bin journalgate --example loadgen >"$WORK/build.log" 2>&1; then
    log "the build failed:"; tail -30 "$WORK/build.log" >&2; exit 1
  fi
fi
[ -x "$JG" ] && [ -x "$LG" ] || fail "missing $JG or $LG"
# which sources the binaries may not contain (--no-build, or edits during the build)
STALE=$(find "$ROOT/src" "$ROOT/examples" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -type f -newer "$JG" 2>/dev/null |
  sed "s|^$ROOT/||" | head -8 | tr '\n' ' ' | sed 's/ $//' || true)
BIN_NOTE="binary built $(date -u -r "$JG" +'%F %H:%M UTC')${STALE:+; modified since the build: $STALE}"
[ -n "$STALE" ] && log "warning: modified since $JG was built: $STALE"

# ------------------------------------------------------------------ the journal report
# The template of bench/ingest.sh: an Exchange envelope journal report (journal-format.md
# §2): the X-MS-Journal-Report marker, multipart/mixed, a text/plain report part (sender,
# subject, Message-Id, To, Cc, Bcc), and the original as message/rfc822 (a short text part
# and a base64 attachment). `{n}` is replaced by loadgen with each message's counter.
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
sed -n '1,/^Content-Transfer-Encoding: base64/p' "$TEMPLATE" | tr -d '\r' >"$R/journal-report-template.txt"
echo "[... base64 lines, then the closing boundaries; $TEMPLATE_BYTES bytes in all before {n} is replaced]" \
  >>"$R/journal-report-template.txt"
log "journal report template: $TEMPLATE_BYTES bytes"

# ------------------------------------------------------------------ timed steps
# timed NAME CMD...: runs CMD (logged) under `timeout` (its own process group, ended on
# exit) with stdin from /dev/null, stdout -> R/NAME.out, stderr -> R/NAME.err; writes
# R/NAME.secs (wall seconds), R/NAME.rss (the command's peak RSS, MB), R/NAME.cpu (its
# user+sys seconds; empty without GNU time). Fails the run when CMD fails.
timed() {
  local name=$1; shift
  local t0 t1 rc=0 child hwm=0 h to=${STEP_TIMEOUT:-$OP_TIMEOUT}
  printf '%s\n' "$*" >>"$CMDS"
  t0=$(now)
  if [ -n "$GNU_TIME" ]; then
    timeout "$to" "$GNU_TIME" -v -o "$R/$name.time" "$@" >"$R/$name.out" 2>"$R/$name.err" </dev/null &
    CUR_PID=$!
  else
    timeout "$to" "$@" >"$R/$name.out" 2>"$R/$name.err" </dev/null &
    CUR_PID=$!
    while kill -0 "$CUR_PID" 2>/dev/null; do
      for child in $(ps -o pid= --ppid "$CUR_PID" 2>/dev/null); do
        h=$(awk '/^VmHWM:/{print $2}' "/proc/$child/status" 2>/dev/null || true)
        [ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
      done
      sleep 0.1
    done
  fi
  wait "$CUR_PID" || rc=$?
  t1=$(now)
  CUR_PID=""
  awk -v a="$t0" -v b="$t1" 'BEGIN{ printf "%.3f\n", b - a }' >"$R/$name.secs"
  if [ -n "$GNU_TIME" ] && [ -s "$R/$name.time" ]; then
    awk -F': ' '/Maximum resident set size/{ printf "%.1f\n", $2 / 1024 }' "$R/$name.time" >"$R/$name.rss"
    awk -F': ' '/User time \(seconds\)/{u = $2} /System time \(seconds\)/{s = $2} END{ printf "%.2f\n", u + s }' "$R/$name.time" >"$R/$name.cpu"
  else
    awk -v h="$hwm" 'BEGIN{ printf "%.1f\n", h / 1024 }' >"$R/$name.rss"
    : >"$R/$name.cpu"
  fi
  if [ "$rc" != 0 ]; then
    [ "$rc" = 124 ] && log "$name: timed out after ${to}s"
    log "$name failed (exit $rc): $*"
    tail -20 "$R/$name.err" >&2 || true
    [ -s "$R/$name.out" ] && tail -5 "$R/$name.out" >&2
    exit 1
  fi
  log "$name: $(cat "$R/$name.secs") s, peak RSS $(cat "$R/$name.rss") MB"
}

# Server-side accounting around a step: server_begin NAME resets the server's VmHWM and
# takes its CPU ticks; server_end NAME -> R/NAME.srvrss (peak RSS MB during the step) and
# R/NAME.srvcpu (CPU seconds during the step).
server_begin() {
  echo 5 >"/proc/$JG_PID/clear_refs" || fail "cannot reset the server's VmHWM"
  tree_cpu_ticks "$JG_PID" >"$R/$1.ticks0"
  note_load "$1"
}
server_end() {
  kill -0 "$JG_PID" 2>/dev/null || { tail -20 "$WORK/jg/stderr" >&2; fail "the server died during $1"; }
  hwm_mb "$JG_PID" >"$R/$1.srvrss"; echo >>"$R/$1.srvrss"
  awk -v a="$(cat "$R/$1.ticks0")" -v b="$(tree_cpu_ticks "$JG_PID")" -v hz="$HZ" 'BEGIN{ printf "%.2f\n", (b - a) / hz }' >"$R/$1.srvcpu"
}

# ------------------------------------------------------------------ journalgate
D="$WORK/jg"
mkdir -p "$D/data"
SMTP_PORT=$(free_port)
CFG="$D/journalgate.toml"
jg_config data_dir="$D/data" smtp="$SMTP_PORT" journal_sources=127.0.0.0/8 key_dir="$WORK/keys" >"$CFG"
cp "$CFG" "$R/journalgate.toml"
jgc() { "$JG" --config "$CFG" "$@" </dev/null; }          # not logged (polling)
jgl() { run_logged "$JG" --config "$CFG" "$@" </dev/null; } # logged

log "adding 5 archive users, 1 auditor and the recovery key"
for u in $USERS; do
  jgl user add "$u@$DOMAIN" --json >>"$D/users.json" || fail "user add $u@$DOMAIN failed"
done
jgl user add "$AUDITOR" --auditor --json >>"$D/users.json" || fail "user add $AUDITOR --auditor failed"
[ "$(grep -c '"password"' "$D/users.json")" = 6 ] || fail "user add: no password in $(cat "$D/users.json")"
jgl archive recovery init --out "$D/recovery" --json >"$R/recovery-init.result" || fail "archive recovery init failed"
if command -v jq >/dev/null; then
  RECOVERY_KEY=$(jq -r '.files[0] // empty' "$R/recovery-init.result")
else
  RECOVERY_KEY=$(sed -n 's/.*"files":\["\([^"]*\)".*/\1/p' "$R/recovery-init.result")
fi
[ -n "$RECOVERY_KEY" ] && [ -s "$RECOVERY_KEY" ] || fail "no recovery key file in: $(cat "$R/recovery-init.result")"

log "starting journalgate (smtp $SMTP_PORT)"
jg_serve "$CFG" "$D"
JG_PID=$!
jg_wait_ready "$D" "$JG_PID" || { tail -20 "$D/stderr" >&2; fail "journalgate did not become ready"; }
MBX_JSON=$(jgl mailbox create --name bench-journal --json) || fail "mailbox create failed: $MBX_JSON"
MBX=$(printf '%s' "$MBX_JSON" | sed -n 's/.*"address":"\([^"]*\)".*/\1/p')
[ -n "$MBX" ] || fail "mailbox create: no address in $MBX_JSON"

# ------------------------------------------------------------------ 1. build the archive
archive_stats() { # FILE -> "pending items"
  jgc archive stats --json >"$1" 2>>"$WORK/stats.err" || true
  echo "$(jv "$1" pending) $(jv "$1" items)"
}
settle
server_begin build
log "build: sending $(human_n "$N") journal reports (concurrency $CONC) -> $MBX"
T_BUILD0=$(now)
STEP_TIMEOUT=$(( OP_TIMEOUT + 120 )) timed send "$LG" smtp --addr "127.0.0.1:$SMTP_PORT" --to "$MBX" --count "$N" \
  --message-file "$TEMPLATE" --counter-start "$COUNTER_START" --concurrency "$CONC" --timeout "$OP_TIMEOUT"
cp "$R/send.out" "$R/send.json"
SENT=$(jv "$R/send.json" messages)
[ "$SENT" = "$N" ] || fail "loadgen: $SENT of $N reports accepted: $(cat "$R/send.json")"
log "build: SMTP done ($(jv "$R/send.json" msgs_per_s) msg/s to the last 250); waiting for the archive"
deadline=$(( $(date +%s) + OP_TIMEOUT ))
while :; do
  pi=$(archive_stats "$R/build.stats.txt"); p=${pi% *}; i=${pi#* }
  [ "$p" = 0 ] && [ "$i" = "$N" ] && break
  if [ "$p" = 0 ] && [ -n "$i" ] && [ "$i" -gt "$N" ]; then fail "archive stats: $i items for $N reports: $(cat "$R/build.stats.txt")"; fi
  [ "$(date +%s)" -lt "$deadline" ] || fail "the archive did not file $N items in ${OP_TIMEOUT}s: pending ${p:-?}, items ${i:-?}"
  sleep 0.2
done
T_BUILD1=$(now)
awk -v a="$T_BUILD0" -v b="$T_BUILD1" 'BEGIN{ printf "%.3f\n", b - a }' >"$R/build.secs"
LAST250=$(jv "$R/send.json" last_250_unix)
awk -v a="$T_BUILD1" -v b="${LAST250:-$T_BUILD1}" 'BEGIN{ d = a - b; if (d < 0) d = 0; printf "%.2f\n", d }' >"$R/build.lag"
server_end build
for k in unknown untrusted_reports quarantined_reports reports_without_original unreadable_dropped; do
  v=$(jv "$R/build.stats.txt" "$k")
  [ "${v:-0}" = 0 ] || log "warning: archive stats $k = $v after the build"
done
du -sb "$D/data/archive" | cut -f1 >"$R/archive.bytes"
du -sb "$D/data" | cut -f1 >"$R/data.bytes"
log "build: $N items archived in $(cat "$R/build.secs") s (archive $(cat "$R/build.lag") s behind the last 250), archive dir $(( $(cat "$R/archive.bytes") / 1000000 )) MB"

# ------------------------------------------------------------------ 2. grants
reset_password() { # LOGIN
  jgl user reset-password "$1" --json >"$R/reset-${1%%@*}.result" || fail "user reset-password $1 failed"
  grep -q '"password"' "$R/reset-${1%%@*}.result" || fail "user reset-password $1: $(cat "$R/reset-${1%%@*}.result")"
}
grant() { # NAME LOGIN
  settle
  server_begin "$1"
  timed "$1" "$JG" --config "$CFG" archive grant "$2" --recovery "$RECOVERY_KEY" --json
  server_end "$1"
  cp "$R/$1.out" "$R/$1.result"
  local k
  for k in entitled granted already unreachable envelopes; do
    [ -n "$(jv "$R/$1.result" "$k")" ] || fail "$1: no \"$k\" in the grant's JSON: $(cat "$R/$1.result")"
  done
  log "$1: $(cat "$R/$1.result")"
}
g() { jv "$R/$1.result" "$2"; }

log "grant: resetting the auditor's password (its new key opens nothing)"
reset_password "$AUDITOR"
grant grant-audit "$AUDITOR"
[ "$(g grant-audit granted)" = "$N" ] || fail "grant-audit: granted $(g grant-audit granted), expected $N"
[ "$(g grant-audit already)" = 0 ] || fail "grant-audit: $(g grant-audit already) items already readable after the reset"
[ "$(g grant-audit unreachable)" = 0 ] || fail "grant-audit: $(g grant-audit unreachable) items the recovery key does not open"
[ "$(g grant-audit envelopes)" = "$N" ] || log "warning: grant-audit: $(g grant-audit envelopes) journal envelopes granted for $N reports"

grant grant-audit-again "$AUDITOR"
[ "$(g grant-audit-again granted)" = 0 ] && [ "$(g grant-audit-again envelopes)" = 0 ] \
  || fail "grant-audit-again: granted $(g grant-audit-again granted) + $(g grant-audit-again envelopes) envelopes; expected a no-op"
[ "$(g grant-audit-again already)" = "$N" ] || fail "grant-audit-again: already $(g grant-audit-again already), expected $N"

log "grant: resetting $USER_GRANTED's password"
reset_password "$USER_GRANTED"
grant grant-user "$USER_GRANTED"
[ "$(g grant-user unreachable)" = 0 ] || fail "grant-user: $(g grant-user unreachable) items the recovery key does not open"
[ "$(g grant-user already)" = 0 ] || fail "grant-user: $(g grant-user already) items already readable after the reset"
[ "$(g grant-user granted)" = "$(g grant-user entitled)" ] || fail "grant-user: granted $(g grant-user granted) of $(g grant-user entitled)"
[ "$(g grant-user entitled)" = "$N" ] || log "warning: $USER_GRANTED is entitled to $(g grant-user entitled) items, expected $N (To on every report)"

# ------------------------------------------------------------------ 3. exports
export_zip() { # NAME FORMAT SELECTION... (--all | --user LOGIN); expected items
  local name=$1 format=$2 sel=$3 expected k zip="$WORK/$1.zip"; shift 3
  local selargs=("$sel" "$@")
  expected=$N
  settle
  server_begin "$name"
  timed "$name" "$JG" --config "$CFG" archive export "${selargs[@]}" --format "$format" --out "$zip" --recovery "$RECOVERY_KEY" --json
  server_end "$name"
  cp "$R/$name.out" "$R/$name.result"
  for k in items bytes envelopes links unreadable; do
    [ -n "$(jv "$R/$name.result" "$k")" ] || fail "$name: no \"$k\" in the export's JSON: $(cat "$R/$name.result")"
  done
  [ -s "$zip" ] || fail "$name: no $zip"
  [ "$(jv "$R/$name.result" unreadable)" = 0 ] || fail "$name: $(jv "$R/$name.result" unreadable) items the recovery key does not open"
  [ "$(jv "$R/$name.result" items)" = "$expected" ] || fail "$name: $(jv "$R/$name.result" items) items exported, expected $expected"
  stat -c %s "$zip" >"$R/$name.zipbytes"
  log "$name: $(cat "$R/$name.result"), zip $(cat "$R/$name.zipbytes") bytes"
}
export_zip export-all-eml eml --all
export_zip export-all-mbox mbox --all
rm -f "$WORK/export-all-mbox.zip"   # one export on disk at a time besides the eml one
export_zip export-user-eml eml --user "$USER_GRANTED"
rm -f "$WORK/export-user-eml.zip"

settle
server_begin verify-export
timed verify-export "$JG" --config "$CFG" archive verify-export "$WORK/export-all-eml.zip" --json
server_end verify-export
cp "$R/verify-export.out" "$R/verify-export.result"
[ "$(jv "$R/verify-export.result" ok)" = true ] || fail "verify-export: not ok: $(cat "$R/verify-export.result")"
[ "$(jv "$R/verify-export.result" proven)" = "$N" ] || fail "verify-export: proven $(jv "$R/verify-export.result" proven), expected $N"
[ "$(jv "$R/verify-export.result" items)" = "$N" ] || fail "verify-export: $(jv "$R/verify-export.result" items) items, expected $N"
rm -f "$WORK/export-all-eml.zip"

# ------------------------------------------------------------------ stop, logs
kill -0 "$JG_PID" 2>/dev/null || fail "the server is not running at the end"
grep -iE 'error|panic' "$D/stderr" 2>/dev/null | head -10 >"$R/server-errors.txt" || true
stop_jg

# ------------------------------------------------------------------ report
secs() { cat "$R/$1.secs"; }
mbs() { awk -v b="$1" -v s="$2" 'BEGIN{ if (s > 0) printf "%.1f", b / 1e6 / s; else printf "–" }'; }
ips() { human_n "$(fmt0 "$(div "$1" "$2")")"; }
mb() { awk -v b="$1" 'BEGIN{ printf "%.1f", b / 1e6 }'; }
cpu_note() { # NAME -> "CPU: server X s + CLI Y s"
  local c; c=$(cat "$R/$1.cpu" 2>/dev/null || true)
  printf 'CPU: server %s s%s' "$(cat "$R/$1.srvcpu")" "${c:+ + CLI $c s}"
}
rss_note() { printf 'peak RSS: server %s MB, CLI %s MB' "$(cat "$R/$1.srvrss")" "$(cat "$R/$1.rss")"; }

SEND_BYTES=$(jv "$R/send.json" bytes)
REPORT_MEAN=$(jv "$R/send.json" size)
TABLE="$WORK/table.md"
{
  echo "| Operation | Items | Seconds | Items/s | MB/s | Notes |"
  echo "|---|---:|---:|---:|---:|---|"
  s=$(secs build)
  printf '| Build: %s journal reports over SMTP (C=%s) until archived | %s | %s | %s | %s | SMTP %s msg/s to the last 250 (%s s); archive done %s s after the last 250; items/s = archived originals; MB/s = report bytes sent; archive dir %s MB; %s; server peak RSS %s MB |\n' \
    "$(human_n "$N")" "$CONC" "$(human_n "$N")" "$(fmt2 "$s")" "$(ips "$N" "$s")" "$(mbs "$SEND_BYTES" "$s")" \
    "$(human_n "$(fmt0 "$(jv "$R/send.json" msgs_per_s)")")" "$(fmt1 "$(jv "$R/send.json" seconds)")" "$(cat "$R/build.lag")" \
    "$(human_n "$(fmt0 "$(mb "$(cat "$R/archive.bytes")")")")" "CPU: server (SMTP + archive worker) $(cat "$R/build.srvcpu") s, loadgen $(cat "$R/send.cpu" 2>/dev/null || echo '?') s" "$(cat "$R/build.srvrss")"
  s=$(secs grant-audit); gr=$(g grant-audit granted); en=$(g grant-audit envelopes)
  printf '| Grant %s after reset-password (recovery key) | %s | %s | **%s** | – | %s messages + %s journal envelopes; %s messages/s; entitled %s, already %s, unreachable %s; %s; %s |\n' \
    "$AUDITOR (auditor)" "$(human_n $(( gr + en )))" "$(fmt2 "$s")" "$(ips $(( gr + en )) "$s")" "$(human_n "$gr")" "$(human_n "$en")" \
    "$(ips "$gr" "$s")" "$(human_n "$(g grant-audit entitled)")" "$(g grant-audit already)" "$(g grant-audit unreachable)" "$(cpu_note grant-audit)" "$(rss_note grant-audit)"
  s=$(secs grant-audit-again); al=$(g grant-audit-again already)
  printf '| Grant %s again (all readable: resumable no-op) | %s | %s | %s | – | granted %s, envelopes %s, already %s (items = entitled messages checked); %s; %s |\n' \
    "$AUDITOR" "$(human_n "$(g grant-audit-again entitled)")" "$(fmt2 "$s")" "$(ips "$(g grant-audit-again entitled)" "$s")" \
    "$(g grant-audit-again granted)" "$(g grant-audit-again envelopes)" "$(human_n "$al")" "$(cpu_note grant-audit-again)" "$(rss_note grant-audit-again)"
  s=$(secs grant-user); gr=$(g grant-user granted); en=$(g grant-user envelopes)
  printf '| Grant %s (user) after reset-password (recovery key) | %s | %s | **%s** | – | %s messages + %s envelopes; entitled %s, already %s, unreachable %s; %s; %s |\n' \
    "$USER_GRANTED" "$(human_n $(( gr + en )))" "$(fmt2 "$s")" "$(ips $(( gr + en )) "$s")" "$(human_n "$gr")" "$en" \
    "$(human_n "$(g grant-user entitled)")" "$(g grant-user already)" "$(g grant-user unreachable)" "$(cpu_note grant-user)" "$(rss_note grant-user)"
  for e in export-all-eml:"Export --all, eml zip" export-all-mbox:"Export --all, mbox zip" export-user-eml:"Export --user $USER_GRANTED, eml zip"; do
    n=${e%%:*} label=${e#*:}
    s=$(secs "$n"); it=$(jv "$R/$n.result" items); by=$(jv "$R/$n.result" bytes)
    printf '| %s | %s | %s | %s | **%s** | %s MB of originals -> zip %s MB; %s envelopes, %s chain links, %s unreadable; %s; %s |\n' \
      "$label" "$(human_n "$it")" "$(fmt2 "$s")" "$(ips "$it" "$s")" "$(mbs "$by" "$s")" "$(fmt1 "$(mb "$by")")" \
      "$(fmt1 "$(mb "$(cat "$R/$n.zipbytes")")")" "$(human_n "$(jv "$R/$n.result" envelopes)")" "$(human_n "$(jv "$R/$n.result" links)")" \
      "$(jv "$R/$n.result" unreadable)" "$(cpu_note "$n")" "$(rss_note "$n")"
  done
  s=$(secs verify-export); by=$(jv "$R/export-all-eml.result" bytes)
  printf '| verify-export of the --all eml zip (offline) | %s | %s | %s | **%s** | ok %s, proven %s, unproven %s, %s chain segments; MB/s over the %s MB of originals (zip %s MB); CPU: CLI %s s; CLI peak RSS %s MB |\n' \
    "$(human_n "$(jv "$R/verify-export.result" items)")" "$(fmt2 "$s")" "$(ips "$(jv "$R/verify-export.result" items)" "$s")" "$(mbs "$by" "$s")" \
    "$(jv "$R/verify-export.result" ok)" "$(human_n "$(jv "$R/verify-export.result" proven)")" "$(jv "$R/verify-export.result" unproven)" \
    "$(jv "$R/verify-export.result" segments)" "$(fmt1 "$(mb "$by")")" "$(fmt1 "$(mb "$(cat "$R/export-all-eml.zipbytes")")")" \
    "$(cat "$R/verify-export.cpu" 2>/dev/null || echo '?')" "$(cat "$R/verify-export.rss")"
} >"$TABLE"

MEM="$WORK/memory.md"
{
  echo "- Server (journalgate serve) peak RSS, VmHWM reset before each step: build $(cat "$R/build.srvrss") MB;" \
    "grants $(cat "$R/grant-audit.srvrss") / $(cat "$R/grant-audit-again.srvrss") / $(cat "$R/grant-user.srvrss") MB;" \
    "exports $(cat "$R/export-all-eml.srvrss") (eml) / $(cat "$R/export-all-mbox.srvrss") (mbox) / $(cat "$R/export-user-eml.srvrss") (user) MB;" \
    "highest of these: $(cat "$R"/{build,grant-audit,grant-audit-again,grant-user,export-all-eml,export-all-mbox,export-user-eml}.srvrss | sort -n | tail -1) MB."
  echo "- Export CLI peak RSS ($([ -n "$GNU_TIME" ] && echo 'GNU time -v, maximum resident set size' || echo 'VmHWM sampled every 0.1 s')):" \
    "$(cat "$R/export-all-eml.rss") MB (--all eml), $(cat "$R/export-all-mbox.rss") MB (--all mbox), $(cat "$R/export-user-eml.rss") MB (--user eml);" \
    "verify-export $(cat "$R/verify-export.rss") MB; grant CLI $(cat "$R/grant-audit.rss") MB."
} >"$MEM"

DATE=$(date +%F)
SUFFIX="" QNOTE="" QARG=""
if [ "$QUICK" = 1 ]; then SUFFIX="-quick" QNOTE=" (--quick)" QARG=" --quick"; fi
[ -n "$N_ARG" ] && { QARG="$QARG --reports $N_ARG"; SUFFIX="$SUFFIX-n$N_ARG"; }
OUT=$(results_file "archive-trust-$DATE$SUFFIX.md")
{
  echo "# journalgate archive trust benchmark: grants and exports, $(date -u +'%F %H:%M UTC')$QNOTE"
  echo
  echo "Hardware: $HW_LINE"
  echo "Filesystem: $FS_NOTE"
  echo
  echo "Versions: journalgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no commit)')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/') ($BIN_NOTE), $(rustc --version 2>/dev/null)"
  echo
  echo "Command: \`bench/archive-trust.sh$QARG\` — an archive of $(human_n "$N") Exchange journal reports of $(human_n "${REPORT_MEAN:-$TEMPLATE_BYTES}") bytes each"
  echo "(an original of about 18 KB inside; sender alice, To bob, Cc carol, Bcc dave; 5 users, 1 auditor, a recovery key),"
  echo "sent with \`loadgen smtp --message-file --concurrency $CONC\`; then the steps below, one run each, on one running server."
  echo
  cat "$TABLE"
  echo
  echo "Seconds: wall clock of the CLI command (through the running server's admin socket; verify-export is offline),"
  echo "after \`sync\` and 2 s idle; the build from the first SMTP connection until \`archive stats --json\` shows pending 0"
  echo "and items == $(human_n "$N"). Grant items/s = (messages + journal envelopes granted) / s; messages/s in the notes."
  echo "Export MB/s = the originals' bytes (the export JSON's \"bytes\") / s, MB = 10^6 bytes; the zip is deflate level 1"
  echo "(every report carries the same random base64 attachment: each eml file compresses on its own, while the mbox"
  echo "stream also finds the previous message's attachment in deflate's 32 KB window, so the mbox zip is smaller)."
  echo "CPU: the server's utime+stime over the step (all threads, /proc) and the CLI's user+sys (GNU time). The"
  echo "machine's CPU may be shared with other work (see the load averages)."
  echo
  echo "## Memory"
  echo
  cat "$MEM"
  echo
  echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  report_errors "" "$R/server-errors.txt"
  echo "## Raw JSON of each step"
  echo
  echo '```'
  printf 'archive stats after the build: %s\n' "$(cat "$R/build.stats.txt")"
  for f in grant-audit grant-audit-again grant-user export-all-eml export-all-mbox export-user-eml verify-export; do
    printf '%s (%s s): %s\n' "$f" "$(cat "$R/$f.secs")" "$(cat "$R/$f.result")"
  done
  echo '```'
  echo
  report_appendix journal-report-template.txt journalgate.toml
} >"$OUT"

print_summary "$TABLE" "$MEM"
log "results written to $OUT (total $(( $(date +%s) - RUN_START )) s)"
