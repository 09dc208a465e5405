# Helpers shared by bench/run.sh, bench/imap.sh and bench/ingest.sh (sourced, not run).
#
# They use the caller's globals: WORK (private temp dir, with WORK/res), CMDS (command
# log), RUN_START and RUN_BUDGET (seconds), BG_PIDS (background pids killed on exit),
# SAMPLER_PID, DC_PIDFILE, and BENCH_TAG (the log prefix).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS_DIR="$BENCH_DIR/results"

log() { printf '[%s %s] %s\n' "${BENCH_TAG:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }

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
