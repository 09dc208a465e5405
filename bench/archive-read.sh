#!/usr/bin/env bash
# journalgate archive read benchmark: reading the per-user archive at scale over IMAP
# (STARTTLS), against Dovecot 2.3 holding the same messages in one Maildir, in one run, on
# loopback only.
#
#   bench/archive-read.sh              10,000 reports; then 100,000 when the budget allows
#   bench/archive-read.sh --quick      1,000 reports (sanity run)
#   bench/archive-read.sh --n N        N reports (only that size unless --max-n is given)
#
# 1. Build. `journalgate serve` with `[archive] journal_sources = ["127.0.0.0/8"]`, one
#    auditor (audit@contoso.example) and one ordinary archive user (alice@contoso.example).
#    bench/archive_read.py writes 100 journal-report templates (Exchange envelope journal
#    reports, ~20 KB, the original as message/rfc822 inside; between external addresses only,
#    so the archive files each original in the auditor's `Unknown Addresses`) and 2 more
#    whose sender is alice (her Sent folder: N/50 reports on top of N, so that the archive
#    holds more than the folder read). Each template is sent with `loadgen smtp
#    --message-file T --counter-start K --count C --concurrency 16` (its `{n}` makes every
#    Subject and Message-ID unique), N/100 reports per template. Done when `journalgate
#    archive stats --json` shows pending 0 and every report archived; reports/s = reports
#    sent / (first loadgen start .. archived). Bodies: four shapes (text + base64
#    attachment, text + HTML alternative, base64 UTF-8 text + attachment, quoted-printable
#    text with quoted replies), 14-22 KB originals of generated prose; "quarterly" is in
#    the Subject of 1 % of them and in the body only of 3 % more.
# 2. Dovecot (Debian dovecot-imapd, a private instance with its own config, ports and
#    directories; the system's configuration is never read or changed): the same N
#    originals, byte-identical to the archived ones, written straight into one user's
#    Maildir/cur (unique names); Dovecot indexes them at the first SELECT. No fts plugin:
#    SEARCH is Dovecot's default (substring search over the index cache and the files).
# 3. Reads (bench/archive_read.py measure, Python imaplib + unverified TLS context): first a
#    warm-up on both servers (SELECT + FETCH 1:* (FLAGS), so the comparison is warm cache
#    against warm cache), then on each server, interleaved, each --repeat (3) times:
#    LOGIN + SELECT (fresh connections), then over one connection `FETCH 1:* (FLAGS
#    ENVELOPE)`, `FETCH 1:* BODY.PEEK[HEADER]`, `SEARCH SUBJECT quarterly`, `SEARCH TEXT
#    <a random word absent from all messages>`, `SEARCH TEXT quarterly`. The median is
#    reported with the result counts, which must match between the servers and the
#    templates (a warning says when they do not). Some messages are then fetched whole
#    from both and compared with the original. journalgate's RSS: VmHWM reset after the
#    warm-up and read at the end, and VmRSS sampled every 0.1 s per operation.
#    With perf installed, journalgate is profiled (`perf record -F 999 -p PID`) over one
#    more run of each operation at the first size (not timed; --no-profile skips it).
# 4. Sizes: the first size, then (full run) 100,000 when the build rate and the read
#    times measured at the first size say it fits in the remaining budget (with 3 repeats,
#    else with 1), and the disk has room; otherwise it is skipped with a note. The archive
#    and the Maildir grow from one size to the next (same templates, new counters).
#
# Filesystem: a fresh journaled ext4 on a sparse image over a direct-I/O loop device (like
# bench/ingest.sh; the root filesystem of the CI machines has no journal); --rootfs runs
# in /tmp instead.
#
# Binaries: $JG_BIN, else $CARGO_TARGET_DIR/release/journalgate (CARGO_TARGET_DIR defaults
# to target/), and $LOADGEN_BIN, else $CARGO_TARGET_DIR/release/examples/loadgen; both are
# copied into the temp dir first. Nothing is built unless --build is given (then: cargo build
# --release --bin journalgate --example loadgen).
#
# Needs root (loop device, Dovecot's privilege drop, /proc/PID/clear_refs). Switches:
# --quick, --n N, --max-n M (the larger size to try; 0: none), --repeat R, --no-install,
# --no-profile, --build, --keep (keep the temp dir), --rootfs.
# BENCH_BUDGET_SECS (default 1800) bounds the run: the larger size is only tried when its
# estimate fits. Prints markdown tables and writes them to
# bench/results/archive-read-<date>[-quick][-nN].md. All processes, mounts, loop devices
# and temp files are removed on exit.
set -euo pipefail

QUICK=0 INSTALL=1 KEEP=0 LOOPFS=1 PROFILE=1 BUILD=0 N_ARG="" MAX_N_ARG="" REPEAT=3
ARGS_TEXT="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --n) shift; N_ARG=${1:-}; [[ "$N_ARG" =~ ^[1-9][0-9]*$ ]] || { echo "--n needs a number" >&2; exit 2; } ;;
    --max-n) shift; MAX_N_ARG=${1:-}; [[ "$MAX_N_ARG" =~ ^[0-9]+$ ]] || { echo "--max-n needs a number" >&2; exit 2; } ;;
    --repeat) shift; REPEAT=${1:-}; [[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "--repeat needs a number" >&2; exit 2; } ;;
    --no-install) INSTALL=0 ;;
    --no-profile) PROFILE=0 ;;
    --build) BUILD=1 ;;
    --keep) KEEP=1 ;;
    --rootfs) LOOPFS=0 ;;
    -h|--help) sed -n '2,62p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then N=${N_ARG:-1000}; MAX_N=${MAX_N_ARG:-0}
elif [ -n "$N_ARG" ]; then N=$N_ARG; MAX_N=${MAX_N_ARG:-0}
else N=10000; MAX_N=${MAX_N_ARG:-100000}; fi
[ "$MAX_N" -gt "$N" ] || MAX_N=0
[ "$N" -le 10000000 ] && [ "$MAX_N" -le 10000000 ] || { echo "at most 10,000,000 reports" >&2; exit 2; }
CONC=16
AUDITOR=audit@contoso.example
USER1=alice@contoso.example

# bench_init, log, run_logged, check_budget, time_left, free_port, jget, human_n, probe_machine,
# the scratch filesystem, jg_config, jg_serve, dovecot_conf, report parts, ...
. "$(dirname "$0")/lib.sh"
bench_init archive-read 1800
JG_SRC="${JG_BIN:-$JG}"
LG_SRC="${LOADGEN_BIN:-$LG}"
PY="$ROOT/bench/archive_read.py"

[ "$(id -u)" = 0 ] || { echo "bench/archive-read.sh needs root (loop device, Dovecot, clear_refs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }

WORK=$(mktemp -d /tmp/jg-archive-read.XXXXXX)
JG_PID="" CUR_PID=""

on_exit() { # (bench_exit, before WORK is removed)
  stop_pid "$CUR_PID" 5
  stop_jg
  kill_dovecot
}
bench_traps

fail() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
settle() { timeout 300 sync || true; sleep 2; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN{ printf "%.3f", b - a }'; }
# per-report disk use on the data volume: gateway mailbox copy (~20 KB), archive item
# (~19 KB) and its envelope item, the duplicate-merging copy in archive/recent (~20 KB),
# the Maildir file (~19 KB), indexes; with a margin
KB_PER_REPORT=110

# ------------------------------------------------------------------ filesystem
if scratch_fs_possible; then
  BIGGEST=$N; [ "$MAX_N" -gt "$BIGGEST" ] && BIGGEST=$MAX_N
  IMG_GB=$(( BIGGEST * KB_PER_REPORT / 1000000 + 6 ))
  HOST_FREE_GB=$(df -P --block-size=1G "$(dirname "$WORK")" | awk 'NR==2{print $4}')
  if [ "$IMG_GB" -gt $(( HOST_FREE_GB - 4 )) ]; then
    # the image is sparse, but it must be able to grow to what the run writes
    IMG_GB=$(( HOST_FREE_GB - 4 ))
    log "note: only ${HOST_FREE_GB} GB free under $(dirname "$WORK"); the image is limited to ${IMG_GB} GB"
  fi
  # inode tables and journal written now, not by ext4lazyinit in the background of the run
  mount_scratch_fs "$IMG_GB" -E lazy_itable_init=0,lazy_journal_init=0
  FS_NOTE="a fresh journaled ext4 on $LOOP_DEV (direct I/O loop over the sparse image $LOOP_IMG, ${IMG_GB} GB; $(findmnt -no FSTYPE -T "$(dirname "$WORK.img")") underneath)"
else
  FS_NOTE=$(rootfs_note)
fi
chmod 755 "$WORK"            # Dovecot's user (nobody) must traverse it
mkdir -p "$WORK/res" "$WORK/keys" "$WORK/bin"
chmod 700 "$WORK/keys"
R="$WORK/res"
CMDS="$WORK/commands.txt"
: >"$CMDS"

log "work dir $WORK"
probe_machine

# ------------------------------------------------------------------ software
if [ "$INSTALL" = 1 ] && { ! command -v dovecot >/dev/null || [ ! -x /usr/lib/dovecot/imap ]; }; then
  log "installing dovecot-core dovecot-imapd (Debian packages)"
  apt_install dovecot-core dovecot-imapd
fi
command -v dovecot >/dev/null && [ -x /usr/lib/dovecot/imap ] \
  || fail "dovecot with imap is needed (apt install dovecot-core dovecot-imapd)"

if [ "$BUILD" = 1 ]; then
  log "building (release)"
  run_logged timeout 3600 cargo build --release --bin journalgate --example loadgen >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; fail "the build failed"; }
fi
[ -x "$JG_SRC" ] || fail "missing $JG_SRC (set JG_BIN, or build: cargo build --release --bin journalgate)"
[ -x "$LG_SRC" ] || fail "missing $LG_SRC (set LOADGEN_BIN, or build: cargo build --release --example loadgen)"
STALE=$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -type f -newer "$JG_SRC" 2>/dev/null |
  sed "s|^$ROOT/||" | head -8 | tr '\n' ' ' | sed 's/ $//' || true)
JG_VERSION="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no commit)')$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes in src/')"
BIN_NOTE="$JG_SRC, built $(date -u -r "$JG_SRC" +'%F %H:%M UTC')${STALE:+; sources modified since: $STALE}"
[ -n "$STALE" ] && log "warning: modified since $JG_SRC was built: $STALE"
# private copies: a concurrent cargo build cannot swap them during the run
cp "$JG_SRC" "$WORK/bin/journalgate"; cp "$LG_SRC" "$WORK/bin/loadgen"
JG="$WORK/bin/journalgate" LG="$WORK/bin/loadgen"
HAVE_PERF=0
if [ "$PROFILE" = 1 ] && command -v perf >/dev/null && perf record -q -o /dev/null -- true >/dev/null 2>&1; then HAVE_PERF=1; fi

# ------------------------------------------------------------------ content
TPL="$WORK/templates"
run_logged python3 "$PY" gen --dir "$TPL" >"$R/gen.json" || fail "archive_read.py gen failed"
log "templates: $(cat "$R/gen.json")"

# ------------------------------------------------------------------ journalgate
D="$WORK/jg"
mkdir -p "$D/data"
SMTP_PORT=$(free_port) JG_IMAP=$(free_port)
CFG="$D/journalgate.toml"
jg_config data_dir="$D/data" smtp="$SMTP_PORT" imap="$JG_IMAP" journal_sources=127.0.0.0/8 key_dir="$WORK/keys" >"$CFG"
cp "$CFG" "$R/journalgate.toml"
jgc() { "$JG" --config "$CFG" "$@" </dev/null; }          # not logged (polling)
jgl() { run_logged "$JG" --config "$CFG" "$@" </dev/null; } # logged
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

log "adding the auditor $AUDITOR and the archive user $USER1"
jgl user add "$AUDITOR" --auditor --json >"$D/auditor.json" || fail "user add $AUDITOR --auditor failed"
jgl user add "$USER1" --json >"$D/user1.json" || fail "user add $USER1 failed"
JG_PASS=$(json_field "$D/auditor.json" password) || fail "no password in $(cat "$D/auditor.json")"
[ -n "$JG_PASS" ] || fail "empty auditor password"

log "starting journalgate (smtp $SMTP_PORT, imap+STARTTLS $JG_IMAP)"
jg_serve "$CFG" "$D"
JG_PID=$!
jg_wait_ready "$D" "$JG_PID" || { tail -20 "$D/stderr" >&2; fail "journalgate did not become ready"; }
jgl mailbox create --name bench-journal --json >"$D/mailbox.json" || fail "mailbox create failed"
MBX=$(json_field "$D/mailbox.json" address) || fail "mailbox create: $(cat "$D/mailbox.json")"

# ------------------------------------------------------------------ Dovecot
DC="$WORK/dovecot"
DC_USER=audit DC_PASS=benchpass
mkdir -p "$DC/run" "$DC/state" "$DC/home/$DC_USER"
chown nobody:nogroup "$DC/home" "$DC/home/$DC_USER"
DC_IMAP=$(free_port)
dovecot_cert "$DC"
{
  echo "# private benchmark instance (dovecot -c this file): nothing from /etc/dovecot is read."
  echo "# No fts plugin: SEARCH is Dovecot's default substring search."
  dovecot_conf "$DC" instance=jgarchiveread protocols=imap password="$DC_PASS" ssl=required
  cat <<EOF
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $DC_IMAP
  }
  inet_listener imaps {
    port = 0
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
EOF
} >"$DC/dovecot.conf"
cp "$DC/dovecot.conf" "$R/dovecot.conf"
log "starting dovecot (imap+STARTTLS $DC_IMAP)"
start_dovecot "$DC" "$DC_IMAP" || fail "dovecot did not start"
MAILDIR="$DC/home/$DC_USER/Maildir"

# ------------------------------------------------------------------ steps
CUR=0                 # reports in Unknown Addresses (and files in the Maildir) so far
declare -A BUILD_SECS=() BUILD_REPORTS=() BUILD_HWM=() MD_SECS=() READ_SECS=() SIZE_NOTE=()
SIZES_DONE=()
SKIPPED=""

# build_to TARGET: the archive's Unknown Addresses from CUR to TARGET reports (plus alice's)
build_to() {
  local target=$1 t0 sent=0 want=0 file first count out ok expected deadline p i
  run_logged python3 "$PY" plan --dir "$TPL" --from "$CUR" --to "$target" --users >"$R/plan-$target.txt"
  log "build $target: $(wc -l <"$R/plan-$target.txt") loadgen runs (one per template) -> $MBX"
  printf '%s\n' "# then one such loadgen run per line of plan-$target.txt (template, counter start, count):" >>"$CMDS"
  echo 5 >"/proc/$JG_PID/clear_refs" || true
  note_load "build-$target"
  t0=$(now)
  local logged=0
  while read -r file first count; do
    out="$R/send-$target.json"
    local cmd=("$LG" smtp --addr "127.0.0.1:$SMTP_PORT" --to "$MBX" --count "$count" --message-file "$file"
               --counter-start "$first" --concurrency "$CONC" --timeout 900)
    if [ "$logged" = 0 ]; then printf '%s\n' "${cmd[*]}" >>"$CMDS"; logged=1; fi
    timeout 1000 "${cmd[@]}" >"$out" 2>>"$R/send-$target.err" </dev/null || true
    ok=$(jget "$out" messages)
    [ "${ok:-0}" = "$count" ] || fail "loadgen: ${ok:-0} of $count reports accepted ($file): $(cat "$out")"
    sent=$((sent + count))
  done <"$R/plan-$target.txt"
  want=$(( target + target / 50 ))
  log "build $target: $sent reports sent in $(secs_since "$t0") s; waiting for the archive ($want items)"
  deadline=$(( $(date +%s) + 600 + sent / 20 ))
  while :; do
    jgc archive stats --json >"$R/stats-$target.json" 2>>"$R/stats.err" || true
    p=$(jget "$R/stats-$target.json" pending); i=$(jget "$R/stats-$target.json" items)
    [ "$p" = 0 ] && [ "$i" = "$want" ] && break
    if [ "$p" = 0 ] && [ -n "$i" ] && [ "$i" -gt "$want" ]; then fail "archive stats: $i items, expected $want: $(cat "$R/stats-$target.json")"; fi
    kill -0 "$JG_PID" 2>/dev/null || { tail -20 "$D/stderr" >&2; fail "journalgate exited during the build"; }
    [ "$(date +%s)" -lt "$deadline" ] || fail "the archive did not file $want items in time: pending ${p:-?}, items ${i:-?}"
    sleep 0.5
  done
  BUILD_SECS[$target]=$(secs_since "$t0")
  BUILD_REPORTS[$target]=$sent
  BUILD_HWM[$target]=$(hwm_mb "$JG_PID")
  for k in unknown quarantined_reports untrusted_reports reports_without_original unreadable_dropped duplicates_merged; do
    v=$(jget "$R/stats-$target.json" "$k")
    case "$k" in
      unknown) [ "$v" = "$target" ] || log "warning: archive stats unknown = $v, expected $target" ;;
      *) [ "${v:-0}" = 0 ] || log "warning: archive stats $k = $v" ;;
    esac
  done
  log "build $target: $sent reports archived in ${BUILD_SECS[$target]} s ($(awk -v n="$sent" -v s="${BUILD_SECS[$target]}" 'BEGIN{printf "%.0f", n / s}') reports/s); server VmHWM ${BUILD_HWM[$target]} MB"

  log "maildir $target: writing originals $CUR..$((target - 1)) into $MAILDIR/cur"
  run_logged python3 "$PY" maildir --dir "$TPL" --maildir "$MAILDIR" --from "$CUR" --to "$target" --owner nobody \
    >"$R/maildir-$target.json" || fail "archive_read.py maildir failed"
  MD_SECS[$target]=$(jget "$R/maildir-$target.json" seconds)
  CUR=$target
}

# measure SIZE: the reads on both servers
measure() {
  local size=$1 t0 perf_args=()
  settle
  note_load "read-$size"
  if [ "$HAVE_PERF" = 1 ] && [ "${#SIZES_DONE[@]}" = 0 ]; then perf_args=(--perf-dir "$WORK/perf"); fi
  log "reads at $size: journalgate '$UNKNOWN_FOLDER' vs Dovecot INBOX, $REPEAT_NOW repeats"
  printf '%s\n' "JG_PASS=*** DC_PASS=*** python3 $PY measure --templates $TPL --n $size --jg 127.0.0.1:$JG_IMAP --jg-user $AUDITOR --jg-folder '$UNKNOWN_FOLDER' --jg-pid $JG_PID --dc 127.0.0.1:$DC_IMAP --dc-user $DC_USER --dc-folder INBOX --dc-master $DC_MASTER --repeat $REPEAT_NOW ${perf_args[*]} --out read-$size.json" >>"$CMDS"
  t0=$(now)
  JG_PASS="$JG_PASS" DC_PASS="$DC_PASS" python3 "$PY" measure --templates "$TPL" --n "$size" \
    --jg "127.0.0.1:$JG_IMAP" --jg-user "$AUDITOR" --jg-folder "$UNKNOWN_FOLDER" --jg-pid "$JG_PID" \
    --dc "127.0.0.1:$DC_IMAP" --dc-user "$DC_USER" --dc-folder INBOX --dc-master "$DC_MASTER" \
    --repeat "$REPEAT_NOW" "${perf_args[@]}" --out "$R/read-$size.json" </dev/null &
  CUR_PID=$!
  wait "$CUR_PID" || { CUR_PID=""; tail -20 "$D/stderr" >&2; fail "the reads at $size failed"; }
  CUR_PID=""
  READ_SECS[$size]=$(secs_since "$t0")
  kill -0 "$JG_PID" 2>/dev/null || { tail -20 "$D/stderr" >&2; fail "journalgate exited during the reads"; }
  if [ "${#perf_args[@]}" -gt 0 ] && [ -d "$WORK/perf" ]; then
    for f in "$WORK/perf"/*.data; do
      [ -s "$f" ] || continue
      local op; op=$(basename "$f" .data)
      { echo "--- $op: by thread"
        perf report -i "$f" --stdio --no-children --sort comm --percent-limit 2 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
        echo "--- $op: by function (self time)"
        perf report -i "$f" --stdio --no-children --sort dso,sym --percent-limit 1.5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -22
      } >"$R/perf-$size-$op.txt" 2>&1 || true
      rm -f "$f"
    done
  fi
  SIZES_DONE+=("$size")
  du -sb "$D/data/archive" 2>/dev/null | cut -f1 >"$R/archive-bytes-$size" || true
  du -sb "$MAILDIR" 2>/dev/null | cut -f1 >"$R/maildir-bytes-$size" || true
  log "reads at $size done in ${READ_SECS[$size]} s"
}

UNKNOWN_FOLDER="Unknown Addresses"
REPEAT_NOW=$REPEAT
build_to "$N"
measure "$N"

if [ "$MAX_N" -gt 0 ]; then
  # estimate the larger size from what the first one took
  add=$(( MAX_N - CUR ))
  est_build=$(awk -v s="${BUILD_SECS[$N]}" -v n="${BUILD_REPORTS[$N]}" -v a="$add" 'BEGIN{ printf "%.0f", s / n * a * 1.02 * 1.15 }')
  est_md=$(awk -v s="${MD_SECS[$N]:-0}" -v n="$N" -v a="$add" 'BEGIN{ printf "%.0f", s / n * a * 1.5 + 10 }')
  scale=$(awk -v a="$MAX_N" -v b="$N" 'BEGIN{ printf "%.4f", a / b }')
  est_read3=$(python3 "$PY" estimate --in "$R/read-$N.json" --scale "$scale" --repeat "$REPEAT")
  est_read1=$(python3 "$PY" estimate --in "$R/read-$N.json" --scale "$scale" --repeat 1)
  left=$(time_left)
  need_kb=$(( add * KB_PER_REPORT ))
  free_kb=$(df -Pk "$WORK" | awk 'NR==2{print $4}')
  est3=$(( est_build + est_md + est_read3 + 60 ))
  est1=$(( est_build + est_md + est_read1 + 60 ))
  log "estimate for $MAX_N: build ${est_build} s, Maildir ${est_md} s, reads ${est_read3} s (${REPEAT} repeats) / ${est_read1} s (1); ${left} s of the budget left; disk: need ~$((need_kb / 1048576)) GB, $((free_kb / 1048576)) GB free"
  ESTIMATE_NOTE="estimate for $(human_n "$MAX_N") from the $(human_n "$N") run (linear): build ${est_build} s, Maildir ${est_md} s, reads ${est_read3} s with $REPEAT repeats (${est_read1} s with 1); ${left} s of the ${RUN_BUDGET} s budget were left"
  if [ "$need_kb" -gt "$free_kb" ]; then
    SKIPPED="$(human_n "$MAX_N") skipped: the data volume has $((free_kb / 1048576)) GB free, about $((need_kb / 1048576)) GB are needed"
  elif [ "$est3" -le "$left" ]; then
    REPEAT_NOW=$REPEAT
  elif [ "$est1" -le "$left" ]; then
    REPEAT_NOW=1
    SIZE_NOTE[$MAX_N]="run with 1 repeat instead of $REPEAT to fit the budget"
  else
    SKIPPED="$(human_n "$MAX_N") skipped: estimated $est1 s even with 1 repeat, $left s of the budget (BENCH_BUDGET_SECS=$RUN_BUDGET) left"
  fi
  if [ -z "$SKIPPED" ]; then
    build_to "$MAX_N"
    measure "$MAX_N"
  else
    log "$SKIPPED"
  fi
fi

# ------------------------------------------------------------------ report
grep -iE ' (error|panic)' "$D/stderr" 2>/dev/null | head -10 >"$R/jg-errors.txt" || true
grep -E 'Error|Fatal|Panic' "$DC/dovecot.log" 2>/dev/null | head -10 >"$R/dc-errors.txt" || true

TABLES="$WORK/tables.md"
IN_ARGS=()
for s in "${SIZES_DONE[@]}"; do IN_ARGS+=(--in "$R/read-$s.json"); done
python3 "$PY" table "${IN_ARGS[@]}" >"$TABLES" || fail "archive_read.py table failed"

BUILD_TABLE="$WORK/build.md"
{
  echo "| archive size (Unknown Addresses) | reports sent in this step | build s (SMTP + archived) | **reports/s** | journalgate VmHWM during the build | archive dir | Maildir | Maildir write s (Python) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
  for s in "${SIZES_DONE[@]}"; do
    ab=$(cat "$R/archive-bytes-$s" 2>/dev/null || echo 0); mb=$(cat "$R/maildir-bytes-$s" 2>/dev/null || echo 0)
    printf '| %s | %s | %s | **%s** | %s MB | %s MB | %s MB | %s |\n' "$(human_n "$s")" "$(human_n "${BUILD_REPORTS[$s]}")" \
      "$(awk -v x="${BUILD_SECS[$s]}" 'BEGIN{printf "%.1f", x}')" \
      "$(awk -v n="${BUILD_REPORTS[$s]}" -v x="${BUILD_SECS[$s]}" 'BEGIN{printf "%.0f", n / x}')" \
      "${BUILD_HWM[$s]}" "$((ab / 1000000))" "$((mb / 1000000))" "${MD_SECS[$s]:-–}"
  done
} >"$BUILD_TABLE"

DATE=$(date +%F)
SUFFIX="" QNOTE=""
[ "$QUICK" = 1 ] && { SUFFIX="-quick"; QNOTE=" (--quick)"; }
[ -n "$N_ARG" ] && SUFFIX="$SUFFIX-n$N"
OUT=$(results_file "archive-read-$DATE$SUFFIX.md")
ENV_TEXT=""
[ -n "${JG_BIN:-}" ] && ENV_TEXT+="JG_BIN=$JG_BIN "
[ -n "${LOADGEN_BIN:-}" ] && ENV_TEXT+="LOADGEN_BIN=$LOADGEN_BIN "
[ -n "${BENCH_BUDGET_SECS:-}" ] && ENV_TEXT+="BENCH_BUDGET_SECS=$BENCH_BUDGET_SECS "
{
  echo "# journalgate archive reads at scale vs Dovecot, $(date -u +'%F %H:%M UTC')$QNOTE"
  echo
  echo "Command: \`${ENV_TEXT}bench/archive-read.sh${ARGS_TEXT:+ $ARGS_TEXT}\`"
  echo
  echo "Hardware: $HW_LINE; $(awk '/^MemAvailable/{printf "%.1f GiB available at the start", $2/1048576}' /proc/meminfo)"
  echo
  echo "Filesystem: $FS_NOTE"
  echo
  echo "Versions: journalgate $JG_VERSION ($BIN_NOTE), Dovecot $(dovecot --version 2>/dev/null | cut -d' ' -f1), $(python3 --version 2>&1), $(openssl version 2>/dev/null | cut -d' ' -f1-2)"
  echo
  echo "Load average at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: see the per-step load averages below)."
  echo
  echo "Content: $(json_field "$R/gen.json" summary)."
  echo "The folder read is the auditor's \`Unknown Addresses\` (every report between external addresses); the archive also holds"
  echo "N/50 reports sent by the archive user alice (her Sent) and one journal envelope per report."
  echo
  echo "## Building the archive"
  echo
  cat "$BUILD_TABLE"
  echo
  echo "reports/s: journal reports sent in the step (loadgen smtp, C=$CONC, one run per template) divided by the time from the"
  echo "first connection until \`archive stats --json\` showed pending 0 and every report archived."
  echo
  echo "## Reads (IMAP over STARTTLS, warm cache on both sides)"
  echo
  cat "$TABLES"
  for s in "${SIZES_DONE[@]}"; do
    [ -n "${SIZE_NOTE[$s]:-}" ] && echo "- $(human_n "$s"): ${SIZE_NOTE[$s]}."
  done
  [ -n "${ESTIMATE_NOTE:-}" ] && echo "- Larger size: ${ESTIMATE_NOTE}."
  [ -n "$SKIPPED" ] && echo "- **$SKIPPED.**"
  echo "- Targets at 1,000,000 items (SELECT and SEARCH SUBJECT under 1 s, SEARCH TEXT under 2 s): not measured here (the"
  echo "  largest size run is above)."
  echo
  echo "Method: both servers answer the same client, one after the other for each repetition (journalgate, then Dovecot),"
  echo "after a warm-up on both (SELECT + FETCH 1:* (FLAGS); Dovecot builds its index of the Maildir there, its first SELECT"
  echo "is shown above). LOGIN + SELECT is timed on a fresh connection after STARTTLS (the TLS handshake is not in it); the other"
  echo "operations on one selected connection. The client sends each command on imaplib's TLS socket and reads the answer with"
  echo "a minimal literal-aware reader (counts FETCH responses and SEARCH hits only). Dovecot has no fts plugin: SEARCH is"
  echo "its default substring search (headers from its index cache once cached, bodies read from the Maildir files); Dovecot"
  echo "caches ENVELOPE and headers in dovecot.index.cache from the first FETCH on, so its later repetitions are cached reads."
  echo "journalgate: the auditor's \`Unknown Addresses\`, items decrypted per message. Result counts are checked against each"
  echo "other and against what the templates hold."
  echo
  report_errors journalgate "$R/jg-errors.txt" dovecot "$R/dc-errors.txt"
  if ls "$R"/perf-*.txt >/dev/null 2>&1; then
    echo "## Where journalgate spends the time (perf record -F 999 -p PID, one extra untimed run of each operation at $(human_n "$N"))"
    echo
    echo '```'
    for f in "$R"/perf-*.txt; do cat "$f"; done
    echo '```'
    echo
  fi
  echo "## Archive stats after each build step"
  echo
  echo '```'
  for s in "${SIZES_DONE[@]}"; do printf '%s: %s\n' "$s" "$(cat "$R/stats-$s.json" 2>/dev/null)"; done
  echo '```'
  echo
  echo "## Raw read results (JSON)"
  echo
  for s in "${SIZES_DONE[@]}"; do
    echo "<details><summary>$(human_n "$s")</summary>"
    echo
    echo '```json'
    python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])), separators=(",", ":")))' "$R/read-$s.json"
    echo '```'
    echo
    echo "</details>"
    echo
  done
  echo "## Load average (1, 5, 15 min) at the start of each step"
  echo
  echo '```'
  cat "$R/loadavg.txt" 2>/dev/null || true
  echo '```'
  echo
  echo "## Commands"
  echo
  echo '```'
  sed "s|$WORK|\$WORK|g" "$CMDS"
  echo '```'
  echo
  echo "## Configurations"
  for f in journalgate.toml dovecot.conf; do
    echo; echo "### $f"; echo; echo '```'; sed "s|$WORK|\$WORK|g" "$R/$f"; echo '```'
  done
  echo
  echo "### One template (t037: the Subject with \"quarterly\"), up to its attachment"
  echo
  echo '```'
  { sed -n '1,/^Content-Transfer-Encoding: base64/p' "$TPL/t037.eml" | tr -d '\r' | head -60; } || true
  echo "[...]"
  echo '```'
} >"$OUT"

echo
cat "$BUILD_TABLE"
echo
cat "$TABLES"
[ -n "${ESTIMATE_NOTE:-}" ] && echo "Larger size: $ESTIMATE_NOTE"
[ -n "$SKIPPED" ] && echo "$SKIPPED"
echo
log "results written to $OUT (total $(( $(date +%s) - RUN_START )) s)"
