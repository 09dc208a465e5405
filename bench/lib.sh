# Helpers shared by the benchmark scripts in bench/ (sourced, not run).
#
# They use the caller's globals: WORK (private temp dir, with WORK/res), CMDS (command
# log), RUN_START and RUN_BUDGET (seconds), BENCH_TAG (the log prefix), JG (the journalgate
# binary), JG_PID (its server), KEEP (1: keep the temp dir), LOOPFS (0: no scratch
# filesystem), and the state below: BG_PIDS (background pids killed on exit), SAMPLER_PID,
# DC_PIDFILE, and LOOP_IMG, LOOP_DEV, MOUNTED (the scratch filesystem).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS_DIR="$BENCH_DIR/results"

log() { printf '[%s %s] %s\n' "${BENCH_TAG:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }

# bench_init TAG [BUDGET]: the common start of a benchmark: BENCH_TAG=TAG, RUN_START (now),
# RUN_BUDGET ($BENCH_BUDGET_SECS, else BUDGET seconds), HZ (clock ticks per second); cd to
# the repository (ROOT); CARGO_TARGET_DIR exported (default ROOT/target) and its release
# binaries in JG (journalgate) and LG (loadgen).
bench_init() {
  BENCH_TAG=$1
  RUN_START=$(date +%s)
  if [ -n "${2:-}" ]; then RUN_BUDGET=${BENCH_BUDGET_SECS:-$2}; fi
  HZ=$(getconf CLK_TCK)
  ROOT=$(cd "$BENCH_DIR/.." && pwd)
  cd "$ROOT"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  JG="$CARGO_TARGET_DIR/release/journalgate"
  LG="$CARGO_TARGET_DIR/release/examples/loadgen"
}

BG_PIDS=() SAMPLER_PID="" DC_PIDFILE="" LOOP_IMG="" LOOP_DEV="" MOUNTED=0

# Run a command, appending it to the command log first.
run_logged() {
  printf '%s\n' "$*" >>"$CMDS"
  "$@"
}

time_left() { echo $(( RUN_BUDGET - ($(date +%s) - RUN_START) )); }
check_budget() {
  if [ "$(time_left)" -le 0 ]; then
    log "run budget of ${RUN_BUDGET}s exhausted; skipping: $*"
    return 1
  fi
}

free_port() {
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    if ! ss -Htln "sport = :$p" 2>/dev/null | grep -q . ; then
      if ! grep -qx "$p" "$WORK/ports" 2>/dev/null; then echo "$p" >>"$WORK/ports"; echo "$p"; return; fi
    fi
  done
  echo "no free port" >&2; return 1
}

# jget FILE KEY -> scalar JSON value (numbers / booleans / strings without quotes)
jget() {
  [ -f "$1" ] || return 0
  sed -n "s/.*\"$2\":\"\\{0,1\\}\\([^,\"}]*\\).*/\\1/p" "$1" 2>/dev/null | head -1 || true
}
fmt1() { awk -v x="${1:-0}" 'BEGIN{ if (x == "") x = 0; printf "%.1f", x }'; }
fmt0() { awk -v x="${1:-0}" 'BEGIN{ if (x == "") x = 0; printf "%.0f", x }'; }
human_n() { awk -v n="${1:-0}" 'BEGIN{ s=sprintf("%d", n); o=""; while (length(s) > 3) { o="," substr(s, length(s)-2) o; s=substr(s, 1, length(s)-3) } print s o }'; }

# note_load NAME: the load average at the start of case NAME, for the report
note_load() { echo "$1: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/res/loadavg.txt"; }

# Memory sampler: every 0.25 s, the sum of Rss and Pss (kB) of the given root
# processes and their direct children. Runs until killed.
mem_sampler() {
  set +e
  local out=$1; shift
  while :; do
    local pids="$*"
    for r in "$@"; do pids="$pids $(ps -o pid= --ppid "$r" 2>/dev/null | tr '\n' ' ')"; done
    for p in $pids; do cat "/proc/$p/smaps_rollup" 2>/dev/null; done |
      awk '/^Rss:/{r+=$2} /^Pss:/{p+=$2} END{printf "%d %d\n", r, p}' >>"$out"
    sleep 0.25
  done
}
start_sampler() { # name roots...
  local name=$1; shift
  : >"$WORK/res/$name.mem"
  mem_sampler "$WORK/res/$name.mem" "$@" &
  SAMPLER_PID=$!
  BG_PIDS+=("$SAMPLER_PID")
}
stop_sampler() { # name -> WORK/res/name.peak: peak Rss and peak Pss in MB
  kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null || true
  awk '{ if ($1>r) r=$1; if ($2>p) p=$2 } END{ printf "%.1f %.1f\n", r/1024, p/1024 }' "$WORK/res/$1.mem" >"$WORK/res/$1.peak"
}
hwm_mb() { # pids... -> sum of VmHWM in MB (live processes only)
  { for p in "$@"; do grep -s '^VmHWM:' "/proc/$p/status" || true; done; } | awk '{s+=$2} END{printf "%.1f", s/1024}'
}

# tree_cpu_ticks PID... -> CPU time (clock ticks, see `getconf CLK_TCK`) of the given
# processes and all their live descendants: utime+stime of each (all threads, live and
# exited) plus cutime+cstime (its children that have exited and been reaped). Children
# that exit between two readings move from their own figures into their parent's
# cutime/cstime, so the difference of two readings is the tree's CPU in between (best
# effort: a child that exits during the reading itself can be missed once).
tree_cpu_ticks() {
  local pids
  pids=$(ps -e -o pid=,ppid= | awk -v roots="$*" '
    { par[$1] = $2; all[NR] = $1 }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) if (r[i] != "") inset[r[i]] = 1
      do { added = 0
        for (k in all) { p = all[k]; if (!(p in inset) && (par[p] in inset)) { inset[p] = 1; added = 1 } }
      } while (added)
      for (p in inset) print p
    }')
  for p in $pids; do cat "/proc/$p/stat" 2>/dev/null || true; done |
    awk '{ sub(/^.*\) /, ""); s += $12 + $13 + $14 + $15 } END { printf "%d\n", s }'
}

# apt_install PACKAGE...: installs Debian packages (output in WORK/apt.log) without letting
# them start their services (a policy-rc.d for the time of the install); exits on failure.
apt_install() {
  local policy_created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; policy_created=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
  timeout 600 apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
    "$@" >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; exit 1; }
  if [ "$policy_created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

# The scratch filesystem: a fresh journaled ext4 on a sparse image (WORK.img) over a loop
# device with direct I/O, mounted on WORK (the root filesystems of the CI machines have no
# journal). scratch_fs_possible: true when LOOPFS=1 and mkfs.ext4 and losetup are there.
scratch_fs_possible() { [ "$LOOPFS" = 1 ] && command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null; }
# mount_scratch_fs GB [MKFS_OPTION...]: makes it GB gigabytes large and mounts it on WORK;
# sets LOOP_IMG, LOOP_DEV and MOUNTED=1.
mount_scratch_fs() {
  local gb=$1; shift
  LOOP_IMG="$WORK.img"
  truncate -s "${gb}G" "$LOOP_IMG"
  mkfs.ext4 -q -F "$@" "$LOOP_IMG"
  LOOP_DEV=$(losetup --find --show --direct-io=on "$LOOP_IMG")
  mount "$LOOP_DEV" "$WORK"
  MOUNTED=1
}
# unmount_scratch_fs: (EXIT trap, after WORK is emptied) unmounts and detaches it and removes
# the image; with KEEP=1 it stays mounted, and the log says so.
unmount_scratch_fs() {
  if [ "${KEEP:-0}" = 1 ]; then
    if [ -n "$LOOP_DEV" ]; then
      log "the loop filesystem stays mounted on $WORK ($LOOP_DEV over $LOOP_IMG): umount, losetup -d and rm it by hand"
    fi
    return 0
  fi
  if [ -n "$LOOP_DEV" ]; then
    if [ "$MOUNTED" = 1 ]; then
      umount "$WORK" 2>/dev/null || { sleep 1; umount "$WORK" 2>/dev/null; } || log "warning: could not unmount $WORK"
    fi
    losetup -d "$LOOP_DEV" 2>/dev/null || log "warning: could not detach $LOOP_DEV"
  fi
  if [ -n "$LOOP_IMG" ]; then rm -f "$LOOP_IMG"; fi
}
# rootfs_note: the FS_NOTE of a run without it (the filesystem of /tmp).
rootfs_note() { echo "$(findmnt -no FSTYPE,OPTIONS -T /tmp 2>/dev/null | cut -c1-80) (the root filesystem)"; }

# jg_config KEY=VALUE...: prints the journalgate.toml the benchmarks share (hostname
# jg.bench.test, listeners on 127.0.0.1 only, self-signed TLS, no free-space floor, 200 ms
# delay after an auth failure, text log). KEYs: data_dir; smtp, pop3, pop3_tls, imap,
# imap_tls, console (a port each; a listener not given is off); smtp_max_connections and
# smtp_max_connections_per_ip; journal_sources (a network) and key_dir (the intake and
# chain keys' directory), which make the [archive] section.
jg_config() {
  local -A c=()
  local kv k
  for kv in "$@"; do
    k=${kv%%=*}
    case "$k" in
      data_dir|smtp|pop3|pop3_tls|imap|imap_tls|console|smtp_max_connections|smtp_max_connections_per_ip|journal_sources|key_dir) c[$k]=${kv#*=} ;;
      *) echo "jg_config: unknown key $k" >&2; return 2 ;;
    esac
  done
  echo 'hostname = "jg.bench.test"'
  echo "data_dir = \"${c[data_dir]}\""
  echo '[smtp]'
  echo "listen = $(loopback_list "${c[smtp]:-}")"
  echo 'listen_tls = []'
  if [ -n "${c[smtp_max_connections]:-}" ]; then echo "max_connections = ${c[smtp_max_connections]}"; fi
  if [ -n "${c[smtp_max_connections_per_ip]:-}" ]; then echo "max_connections_per_ip = ${c[smtp_max_connections_per_ip]}"; fi
  printf '[pop3]\nlisten = %s\nlisten_tls = %s\n' "$(loopback_list "${c[pop3]:-}")" "$(loopback_list "${c[pop3_tls]:-}")"
  printf '[imap]\nlisten = %s\nlisten_tls = %s\n' "$(loopback_list "${c[imap]:-}")" "$(loopback_list "${c[imap_tls]:-}")"
  printf '[tls]\nsource = "self-signed"\n'
  printf '[console]\nlisten = "%s"\n' "${c[console]:+127.0.0.1:${c[console]}}"
  printf '[spool]\nmin_free_bytes = 0\n[auth]\nfailure_delay_ms = 200\n[log]\nformat = "text"\n'
  if [ -n "${c[journal_sources]:-}${c[key_dir]:-}" ]; then echo '[archive]'; fi
  if [ -n "${c[journal_sources]:-}" ]; then echo "journal_sources = [\"${c[journal_sources]}\"]"; fi
  if [ -n "${c[key_dir]:-}" ]; then
    echo "intake_key_file = \"${c[key_dir]}/intake.key\""
    echo "signing_key_file = \"${c[key_dir]}/chain.key\""
  fi
}
# loopback_list [PORT]: a TOML listener list: ["127.0.0.1:PORT"], or [] without a port.
loopback_list() { if [ -n "${1:-}" ]; then echo "[\"127.0.0.1:$1\"]"; else echo '[]'; fi; }

# jg_serve CONFIG DIR: starts `journalgate --config CONFIG serve` in the background (logged;
# stdout to DIR/stdout, stderr appended to DIR/stderr); its pid is in $! afterwards.
jg_serve() {
  printf '%s\n' "$JG --config $1 serve" >>"$CMDS"
  "$JG" --config "$1" serve >"$2/stdout" 2>>"$2/stderr" </dev/null &
}
# jg_wait_ready DIR PID [SECS]: waits up to SECS (default 30) for the ready line in
# DIR/stdout; fails when it does not come, or when the process PID ends without it.
jg_wait_ready() {
  for _ in $(seq $(( ${3:-30} * 10 ))); do
    grep -q 'journalgate ready' "$1/stdout" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  grep -q 'journalgate ready' "$1/stdout" 2>/dev/null
}

# stop_pid PID [SECS]: stops a server process that is still running: TERM, up to SECS
# (default 10) seconds for it to end, then KILL; reaps it.
stop_pid() {
  local p=${1:-}
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p"
    for _ in $(seq $(( ${2:-10} * 10 ))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  fi
}
# stop_jg: stops the journalgate server in JG_PID (see stop_pid) and clears JG_PID.
stop_jg() { stop_pid "${JG_PID:-}"; JG_PID=""; }

# dovecot_cert DIR: a self-signed certificate for localhost (2 days) in DIR/cert.pem, DIR/key.pem.
dovecot_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -days 2 -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
}
# dovecot_conf DIR KEY=VALUE...: prints the settings of a private Dovecot whose files are all
# under DIR, up to its service blocks (the caller adds those): listening on 127.0.0.1, mail in
# ~/Maildir, every user nobody with the home DIR/home/USER. KEYs: instance (instance_name),
# protocols, password (the one static password), ssl=required (with dovecot_cert's files and
# plaintext auth off; else ssl = no), fsync=always (mail_fsync).
dovecot_conf() {
  local dir=$1 kv k; shift
  local -A c=()
  for kv in "$@"; do
    k=${kv%%=*}
    case "$k" in
      instance|protocols|password|ssl|fsync) c[$k]=${kv#*=} ;;
      *) echo "dovecot_conf: unknown key $k" >&2; return 2 ;;
    esac
  done
  printf 'instance_name = %s\nbase_dir = %s/run\nstate_dir = %s/state\nlog_path = %s/dovecot.log\n' \
    "${c[instance]}" "$dir" "$dir" "$dir"
  printf 'protocols = %s\nlisten = 127.0.0.1\n' "${c[protocols]}"
  if [ "${c[ssl]:-}" = required ]; then
    printf 'ssl = required\nssl_cert = <%s/cert.pem\nssl_key = <%s/key.pem\n' "$dir" "$dir"
    printf 'ssl_dh = </usr/share/dovecot/dh.pem\ndisable_plaintext_auth = yes\nauth_mechanisms = plain\n'
  else
    echo 'ssl = no'
  fi
  printf 'auth_username_format = %%Ln\nmail_location = maildir:~/Maildir\n'
  if [ -n "${c[fsync]:-}" ]; then echo "mail_fsync = ${c[fsync]}"; fi
  printf 'passdb {\n  driver = static\n  args = password=%s\n}\n' "${c[password]}"
  printf 'userdb {\n  driver = static\n  args = uid=nobody gid=nogroup home=%s/home/%%n allow_all_users=yes\n}\n' "$dir"
}
# start_dovecot DIR PORT...: starts the private Dovecot of DIR/dovecot.conf (logged) and waits
# up to 10 s for its master pid file and for every TCP PORT to listen; sets DC_PIDFILE and
# DC_MASTER; fails, with Dovecot's log on stderr, when it did not start.
start_dovecot() {
  local dir=$1 port up; shift
  DC_PIDFILE="$dir/run/master.pid"
  if ! run_logged timeout 30 dovecot -c "$dir/dovecot.conf" >"$dir/start.log" 2>&1 </dev/null; then
    cat "$dir/start.log" "$dir/dovecot.log" >&2 2>/dev/null
    return 1
  fi
  for _ in $(seq 100); do
    up=1
    [ -f "$DC_PIDFILE" ] || up=0
    for port in "$@"; do ss -Htln "sport = :$port" | grep -q . || up=0; done
    [ "$up" = 1 ] && break
    sleep 0.1
  done
  DC_MASTER=$(tr -dc 0-9 <"$DC_PIDFILE" 2>/dev/null || true)
  [ -n "$DC_MASTER" ] || { cat "$dir/dovecot.log" >&2 2>/dev/null; return 1; }
}
# postfix_conf PF_DIR PORT LMTP_SOCKET: writes PF_DIR/etc/main.cf and master.cf of a private
# Postfix (own config, queue and data directories under PF_DIR; maillog in PF_DIR/maillog)
# that listens for SMTP on 127.0.0.1:PORT and hands every message for @bench.test to the
# LMTP socket (a private Dovecot's).
postfix_conf() {
  local pf=$1 port=$2 lmtp=$3
  cat >"$pf/etc/main.cf" <<EOF
# private benchmark instance: own config, queue and data directories
compatibility_level = 3.6
config_directory = $pf/etc
queue_directory = $pf/queue
data_directory = $pf/data
meta_directory = /etc/postfix
maillog_file = $pf/maillog
maillog_file_prefixes = $WORK
myhostname = mta.bench.test
mydomain = bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_banner = \$myhostname ESMTP
virtual_mailbox_domains = bench.test
virtual_mailbox_maps = static:OK
virtual_transport = lmtp:unix:$lmtp
EOF
  cat >"$pf/etc/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}
# stop_postfix DIR: (EXIT trap) ends the private Postfix under DIR at once, if it runs: abort,
# then KILL its master and the master's children.
stop_postfix() {
  if [ -n "$1" ] && [ -f "$1/queue/pid/master.pid" ]; then
    postfix -c "$1/etc" abort >/dev/null 2>&1 </dev/null
    local mp; mp=$(tr -dc 0-9 <"$1/queue/pid/master.pid")
    [ -n "$mp" ] && { sleep 0.5; pkill -KILL -P "$mp" 2>/dev/null; kill -KILL "$mp" 2>/dev/null; }
  fi
}

# Stop the private Dovecot whose master pid is in DC_PIDFILE (for the EXIT trap).
kill_dovecot() {
  if [ -n "$DC_PIDFILE" ] && [ -f "$DC_PIDFILE" ]; then
    local dp; dp=$(tr -dc 0-9 <"$DC_PIDFILE")
    if [ -n "$dp" ]; then
      kill -TERM "$dp" 2>/dev/null
      for _ in $(seq 30); do kill -0 "$dp" 2>/dev/null || break; sleep 0.1; done
      pkill -KILL -P "$dp" 2>/dev/null; kill -KILL "$dp" 2>/dev/null
    fi
  fi
}

# bench_traps: sets the EXIT trap (bench_exit) and INT/TERM/HUP (log, exit 130).
bench_traps() {
  trap bench_exit EXIT
  trap 'log "interrupted"; exit 130' INT TERM HUP
}
# bench_exit: the EXIT trap: kills BG_PIDS, runs the script's own on_exit (stops what it
# started), then remove_work; exits with the script's status (logged when not 0).
bench_exit() {
  local rc=$? p
  set +e
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  on_exit
  remove_work
  [ "$rc" = 0 ] || log "failed (exit $rc)"
  exit "$rc"
}
# remove_work: removes WORK (its files, the scratch filesystem, the directory); with KEEP=1
# the log says where it stays instead.
remove_work() {
  [ -n "${WORK:-}" ] || return 0
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "${WORK:?}"/* "$WORK"/.[!.]* 2>/dev/null; fi
  unmount_scratch_fs
  if [ "${KEEP:-0}" != 1 ]; then rmdir "$WORK" 2>/dev/null; fi
}

# Sets LOAD_START and HW_LINE (for the report) and warns when the machine is busy.
probe_machine() {
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  if awk -v l="${LOAD_START%% *}" 'BEGIN{ exit !(l > 1.0) }'; then
    log "warning: load average is $LOAD_START; other work on this machine will disturb the figures"
  fi
  local cpu mem fs
  cpu=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
  mem=$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
  fs=$(df -PT "$WORK" | awk 'NR==2{print $2" on "$1}')
  HW_LINE="$(nproc) cores (${cpu:-unknown CPU}), $mem RAM, temp dir on $fs, kernel $(uname -r)"
  log "hardware: $HW_LINE"
}

# results_file NAME -> path of bench/results/NAME (the directory is created)
results_file() {
  mkdir -p "$RESULTS_DIR"
  printf '%s/%s\n' "$RESULTS_DIR" "$1"
}

# report_errors LABEL FILE [LABEL FILE...]: the "Server log excerpts (errors)" part of a
# results file: each FILE that is not empty, after a "LABEL:" line (none when LABEL is "");
# nothing when all are empty.
report_errors() {
  local a=("$@") i any=0
  for ((i = 1; i < ${#a[@]}; i += 2)); do if [ -s "${a[i]}" ]; then any=1; fi; done
  [ "$any" = 1 ] || return 0
  echo "## Server log excerpts (errors)"
  echo
  echo '```'
  for ((i = 0; i < ${#a[@]}; i += 2)); do
    [ -s "${a[i + 1]}" ] || continue
    if [ -n "${a[i]}" ]; then echo "${a[i]}:"; fi
    cat "${a[i + 1]}"
  done
  echo '```'
  echo
}

# report_appendix CONFIG... : the end of a results file (load averages, commands, raw
# loadgen output, and the configurations named that are in WORK/res).
report_appendix() {
  local r="$WORK/res" f
  echo "## Load average (1, 5, 15 min) at the start of each case"
  echo
  echo '```'
  cat "$r/loadavg.txt" 2>/dev/null || true
  echo '```'
  echo
  echo "## Commands"
  echo
  echo '```'
  cat "$CMDS"
  echo '```'
  echo
  echo "## Raw loadgen output"
  echo
  echo '```'
  for f in "$r"/*.json; do printf '%s: %s\n' "$(basename "$f" .json)" "$(cat "$f")"; done
  echo '```'
  echo
  echo "## Configurations"
  for f in "$@"; do
    [ -f "$r/$f" ] || continue
    echo; echo "### $f"; echo; echo '```'; cat "$r/$f"; echo '```'
  done
}

# print_summary TABLE TARGETS: the tables and the command log, on stdout
print_summary() {
  echo
  cat "$1"
  echo
  cat "$2"
  echo
  echo "Commands:"
  cat "$CMDS"
  echo
}
