#!/usr/bin/env bash
# journalgate web console benchmark: dashboard, /metrics and API latency with many gateway
# mailboxes and many messages waiting, and SMTP ingest with and without the console being
# scraped, on loopback only.
#
#   bench/console.sh            full run: 1,000 mailboxes, 100,000 messages waiting
#   bench/console.sh --quick    sanity run: 100 mailboxes, 10,000 messages waiting
#
# Method (one journalgate server, on a fresh journaled ext4, see below):
#  1. Config: SMTP on a private port, `[console] listen` on another (HTTPS, self-signed),
#     POP3/IMAP off, the archive at its default (enabled) with no users and no recovery key,
#     so it takes no copies (the dashboard and /api/v1/status still ask it for its stats).
#     An administrator (`journalgate admin add`), a write token (creates mailboxes) and a
#     read-only token (`journalgate token create --read-only`, for the GETs).
#  2. Mailboxes: 20 are made with `journalgate mailbox create --json` (one process each,
#     xargs -P2) and 20 with `POST /api/v1/mailboxes` to the running server (curl, a new TLS
#     connection each, xargs -P2); whichever was faster makes the rest. Both rates reported.
#  3. Fill: `loadgen smtp` once per mailbox (100 messages of 4,000 bytes, C=4, xargs -P4);
#     the waiting count is then checked in /metrics (sum of journalgate_mailbox_messages).
#  4. Latency, everything waiting: GET / (dashboard, session cookie from POST /login),
#     GET /metrics (from loopback: in scrape_networks, no token), GET /api/v1/status and
#     GET /api/v1/mailboxes (read-only Bearer token), and GET /healthz as the floor (TLS +
#     HTTP alone). N sequential requests each (200; 50 with --quick), first over one warm
#     keep-alive HTTP/1.1 connection, then each on a fresh TCP + TLS connection (handshake
#     included in the time), after 3 unmeasured warm-up requests. Times from sending the
#     request (fresh: from connect) until the whole body is read, by a Python http.client
#     + ssl client (`python3 WORK/console_client.py`). Also: the server's CPU per request
#     (utime+stime of the whole process over the batch / N: the client's own CPU is not in
#     it) and the server's RSS (sampled every 0.25 s).
#  5. Ingest: `loadgen smtp` of 20,000-byte messages at C=8 into a fresh mailbox per run,
#     alternately without console traffic ("baseline") and while a scraper GETs /metrics,
#     the dashboard and /api/v1/status once per second each (keep-alive connections, like
#     Prometheus and a browser tab with a refreshing page). Pairs in the order B S, S B,
#     B S, ... (3 pairs; the messages of each run are removed afterwards by suspending and
#     deleting its mailbox through the API, so every run sees the same 1,000 mailboxes and
#     100,000 waiting messages). Each run is sized from a calibration run to take about
#     20 s (6 s with --quick), at least 5,000 messages (1,000 with --quick). Reported:
#     msg/s per run (loadgen: first connection to the end), medians, the drop of the
#     scraped median against the baseline median (the budget is 2 %), the drop of each
#     pair, the server's CPU per message, the scrapes done and their latency under load,
#     and the scraper's own CPU (it runs on the same 2 cores as the server and loadgen).
#  Other work: the script waits (up to 15 min at the start, 5 min before the latency runs and
#  before each ingest run) until processes that are not its own use less than a quarter of a
#  core, and reports the CPU that other work used during each run (/proc/stat less its own
#  process tree), so a run disturbed by, say, a compiler is seen as such.
#
# Filesystem: everything runs on a fresh journaled ext4 (a sparse image on a loop device with
# direct I/O, made for the run and removed after it), as in bench/ingest.sh: the root
# filesystem of the CI machines has no journal. --rootfs runs in /tmp instead.
#
# Switches: --quick, --no-build (use the binaries in target/release; they are copied into
# the temp dir at the start, so a rebuild during the run does not change them), --keep (keep
# the temp dir), --rootfs. BENCH_BUDGET_SECS (default 1200) bounds the run: later ingest runs
# are skipped. For syntax checks, the sizes can be overridden: BENCH_MAILBOXES,
# BENCH_MESSAGES (in all), BENCH_LAT_N, BENCH_CALIB_N, BENCH_INGEST_N (then the calibration
# does not size the runs), BENCH_PAIRS.
# Needs root for the loop mount (without it: --rootfs behaviour). Prints markdown tables and
# writes them to bench/results/console-<date>[-quick].md. All processes, mounts and temp
# dirs are removed on exit.
set -euo pipefail

QUICK=0 BUILD=1 KEEP=0 LOOPFS=1
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --rootfs) LOOPFS=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  NMB=100 NMSG=10000 LAT_N=50 INGEST_MIN=1000 INGEST_SECS=6 CALIB_N=1000
else
  NMB=1000 NMSG=100000 LAT_N=200 INGEST_MIN=5000 INGEST_SECS=20 CALIB_N=3000
fi
NMB=${BENCH_MAILBOXES:-$NMB}
NMSG=${BENCH_MESSAGES:-$NMSG}
CALIB_N=${BENCH_CALIB_N:-$CALIB_N}
LAT_N=${BENCH_LAT_N:-$LAT_N}
PAIRS=${BENCH_PAIRS:-3}
PER_MB=$(( (NMSG + NMB - 1) / NMB ))
NMSG=$(( PER_MB * NMB ))
FILL_SIZE=4000        # bytes per waiting message
FILL_C=4              # connections per loadgen of the fill
FILL_P=4              # loadgens at a time
INGEST_SIZE=20000     # bytes per message of the ingest runs (a journal report's size)
INGEST_C=8
SAMPLE_MB=20          # mailboxes made by each method before choosing the faster
CASE_TIMEOUT=600

# bench_init, log, run_logged, check_budget, free_port, jget, fmt*, human_n, samplers, the
# scratch filesystem, jg_config, jg_serve, stop_jg, report parts
. "$(dirname "$0")/lib.sh"
bench_init console-bench 1200
JG_SRC=$JG LG_SRC=$LG

command -v python3 >/dev/null || { echo "bench/console.sh needs python3" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench/console.sh needs curl" >&2; exit 1; }

WORK=$(mktemp -d /tmp/jg-console.XXXXXX)
JG_PID="" SCRAPER_PID=""

on_exit() { # (bench_exit, before WORK is removed)
  [ -n "$SCRAPER_PID" ] && kill "$SCRAPER_PID" 2>/dev/null
  stop_jg
  wait 2>/dev/null
  [ "$KEEP" = 1 ] || rm -rf "$WORK".*.key 2>/dev/null
}
bench_traps

if [ "$(id -u)" = 0 ] && scratch_fs_possible; then
  mount_scratch_fs 20
  FS_NOTE="a fresh journaled ext4 on $LOOP_DEV (direct I/O loop over $LOOP_IMG, 20 GB sparse)"
else
  FS_NOTE=$(rootfs_note)
fi
mkdir -p "$WORK/res" "$WORK/bin" "$WORK/fill" "$WORK/mk"
CMDS="$WORK/commands.txt"
: >"$CMDS"

settle() { sync; sleep 2; }
now() { date +%s.%N; }
# CPU ticks used by the whole machine (all cores; /proc/stat) and by this script's process tree
# (the server, loadgen, the scraper, the samplers; exited children through cutime/cstime):
# their difference over a run is the CPU of other work (kernel threads included: the loop
# device's I/O workers count there).
sys_busy() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
ours() { tree_cpu_ticks "$$"; }
# wait_quiet MAX_SECS LABEL: waits until other work uses less than a quarter of a core (over
# 2 s), at most MAX_SECS; the wait is noted in res/waits.txt.
wait_quiet() {
  local max=$1 waited=0 b0 b1 o0 o1 f
  while :; do
    b0=$(sys_busy); o0=$(ours); sleep 2; b1=$(sys_busy); o1=$(ours)
    f=$(( (b1 - b0) - (o1 - o0) ))
    [ "$f" -lt $(( HZ / 2 )) ] && break
    [ "$waited" = 0 ] && log "$2: other work is using $(awk -v f="$f" -v hz="$HZ" 'BEGIN{printf "%.1f", f / hz / 2}') cores; waiting (at most ${max} s) for it to end"
    waited=$((waited + 2))
    if [ "$waited" -ge "$max" ]; then log "$2: the machine is still busy after ${max} s; going on"; break; fi
  done
  [ "$waited" = 0 ] || log "$2: waited ${waited} s for other work"
  echo "$2 $waited" >>"$WORK/res/waits.txt"
}
foreign_note() { # NAME B0 B1 O0 O1 SECONDS -> res/NAME.foreign: "cpu-seconds cores"
  awk -v b="$(( $3 - $2 ))" -v o="$(( $5 - $4 ))" -v s="$6" -v hz="$HZ" \
    'BEGIN{ f = (b - o) / hz; if (f < 0) f = 0; printf "%.2f %.2f\n", f, (s > 0 ? f / s : 0) }' >"$WORK/res/$1.foreign"
}
fmt2() { awk -v x="${1:-0}" 'BEGIN{ if (x == "") x = 0; printf "%.2f", x }'; }

# ------------------------------------------------------------------ setup
log "work dir $WORK"
: >"$WORK/res/waits.txt"
wait_quiet 900 start
RUN_START=$(date +%s)
probe_machine

if [ "$BUILD" = 1 ]; then
  log "building (release)"
  if ! run_logged cargo build --release --bin journalgate --example loadgen >"$WORK/build.log" 2>&1; then
    log "the build failed:"; tail -30 "$WORK/build.log" >&2; exit 1
  fi
fi
[ -x "$JG_SRC" ] && [ -x "$LG_SRC" ] || { log "missing $JG_SRC or $LG_SRC"; exit 1; }
# which sources the binaries may not contain (--no-build, or edits during the build)
STALE=$(find "$ROOT/src" "$ROOT/examples" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -type f -newer "$JG_SRC" 2>/dev/null |
  sed "s|^$ROOT/||" | head -8 | tr '\n' ' ' | sed 's/ $//' || true)
BIN_NOTE="binary built $(date -u -r "$JG_SRC" +'%F %H:%M UTC')${STALE:+; modified since the build: $STALE}"
[ -n "$STALE" ] && log "warning: modified since $JG_SRC was built: $STALE"
UNCOMMITTED=$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l || echo 0)
# private copies: a rebuild by someone else during the run does not swap the binaries
cp "$JG_SRC" "$WORK/bin/journalgate"; cp "$LG_SRC" "$WORK/bin/loadgen"
JG="$WORK/bin/journalgate" LG="$WORK/bin/loadgen"

# ------------------------------------------------------------------ the HTTP client
# login: POST /login, prints the jg_session cookie. lat: N timed GETs (keep-alive or fresh).
# scrape: GETs paths once per interval each (keep-alive) until SIGTERM; one line per request,
# then a summary line with its own CPU. sum: the waiting messages and mailboxes in /metrics.
PY="$WORK/console_client.py"
cat >"$PY" <<'PYEOF'
import http.client, json, os, signal, ssl, sys, time, urllib.parse

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE

def conn(port):
    return http.client.HTTPSConnection("127.0.0.1", port, context=CTX, timeout=120)

def headers_for(a):
    h = {"User-Agent": "jg-console-bench"}
    if a.get("cookie"):
        h["Cookie"] = "jg_session=" + a["cookie"]
    if a.get("token"):
        h["Authorization"] = "Bearer " + a["token"]
    return h

def get(c, path, h):
    c.request("GET", path, headers=h)
    r = c.getresponse()
    body = r.read()
    return r.status, body

def pct(sorted_v, p):
    if not sorted_v:
        return 0.0
    i = int(round((len(sorted_v) - 1) * p))
    return sorted_v[i]

def args(argv):
    a = {}
    for x in argv:
        k, _, v = x.partition("=")
        a[k] = v
    return a

def cmd_login(a):
    c = conn(int(a["port"]))
    body = urllib.parse.urlencode({"name": a["name"], "password": a["password"]})
    c.request("POST", "/login", body=body,
              headers={"Content-Type": "application/x-www-form-urlencoded"})
    r = c.getresponse(); r.read()
    for k, v in r.getheaders():
        if k.lower() == "set-cookie" and v.startswith("jg_session="):
            print(v.split(";", 1)[0].split("=", 1)[1]); return 0
    print("login failed: %d" % r.status, file=sys.stderr); return 1

def cmd_lat(a):
    port, path, n, mode = int(a["port"]), a["path"], int(a["n"]), a["mode"]
    h = headers_for(a)
    times, sizes, statuses = [], [], {}
    retries = 0
    c = conn(port) if mode == "keep" else None
    for i in range(n + 3):
        t0 = time.perf_counter()
        if mode == "fresh":
            c = conn(port)
            c.connect()
        try:
            st, body = get(c, path, h)
        except (http.client.HTTPException, OSError):
            # the server closed the kept connection (e.g. its 5 min deadline): once more, anew
            retries += 1
            c.close(); c = conn(port)
            t0 = time.perf_counter()
            st, body = get(c, path, h)
        dt = (time.perf_counter() - t0) * 1000.0
        if mode == "fresh":
            c.close()
        if i < 3:
            continue
        times.append(dt); sizes.append(len(body))
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    if c is not None:
        c.close()
    s = sorted(times)
    print(json.dumps({"path": path, "mode": mode, "n": n, "retries": retries,
        "p50_ms": round(pct(s, .5), 2), "p95_ms": round(pct(s, .95), 2),
        "p99_ms": round(pct(s, .99), 2), "max_ms": round(s[-1], 2),
        "mean_ms": round(sum(s) / len(s), 2), "bytes": int(sum(sizes) / len(sizes)),
        "status": statuses}, separators=(",", ":")))
    return 0

STOP = False
def cmd_scrape(a):
    global STOP
    port, interval = int(a["port"]), float(a.get("interval", "1"))
    paths = a["paths"].split(",")
    out = open(a["out"], "a", buffering=1)
    conns = {}
    def on_term(*_):
        global STOP
        STOP = True
    signal.signal(signal.SIGTERM, on_term)
    t0 = os.times()
    start = time.monotonic(); tick = 0; late = 0
    while not STOP:
        for p in paths:
            if STOP:
                break
            h = {"User-Agent": "jg-console-bench"}
            if p == "/":
                h["Cookie"] = "jg_session=" + a["cookie"]
            elif p.startswith("/api/"):
                h["Authorization"] = "Bearer " + a["token"]
            t = time.perf_counter()
            try:
                c = conns.get(p) or conn(port)
                conns[p] = c
                st, body = get(c, p, h)
                size = len(body)
            except Exception as e:
                conns.pop(p, None); st, size = 0, 0
            out.write("%.3f %s %.2f %d %d\n" % (time.time(), p, (time.perf_counter() - t) * 1000.0, st, size))
        tick += 1
        wait = start + tick * interval - time.monotonic()
        if wait > 0:
            # sleep in short steps so SIGTERM ends it promptly
            end = time.monotonic() + wait
            while not STOP and time.monotonic() < end:
                time.sleep(max(0.0, min(0.05, end - time.monotonic())))
        else:
            late += 1
    t1 = os.times()
    out.write("# cpu_s %.3f ticks %d late %d\n" % ((t1.user - t0.user) + (t1.system - t0.system), tick, late))
    return 0

def cmd_sum(a):
    c = conn(int(a["port"]))
    st, body = get(c, "/metrics", {})
    msgs = boxes = 0
    for line in body.decode().splitlines():
        if line.startswith("journalgate_mailbox_messages{"):
            boxes += 1; msgs += int(float(line.rsplit(" ", 1)[1]))
    print("%d %d %d" % (msgs, boxes, len(body)))
    return 0

if __name__ == "__main__":
    cmd = sys.argv[1]
    sys.exit({"login": cmd_login, "lat": cmd_lat, "scrape": cmd_scrape, "sum": cmd_sum}[cmd](args(sys.argv[2:])))
PYEOF

# ------------------------------------------------------------------ journalgate
D="$WORK/jg"
mkdir -p "$D/data"
CONF="$D/journalgate.toml"
# A port picked as free can be taken by other work before the server binds it: new ports, up
# to 3 tries.
for try in 1 2 3; do
  SMTP_PORT=$(free_port)
  CPORT=$(free_port)
  jg_config data_dir="$D/data" smtp="$SMTP_PORT" smtp_max_connections=2000 smtp_max_connections_per_ip=1000 \
    console="$CPORT" >"$CONF"
  log "starting journalgate (smtp $SMTP_PORT, console $CPORT)"
  : >"$D/stderr"
  jg_serve "$CONF" "$D"
  JG_PID=$!
  jg_wait_ready "$D" "$JG_PID" && break
  if grep -q 'Address already in use' "$D/stderr" && [ "$try" -lt 3 ]; then
    log "a port was taken meanwhile; again with others"; stop_jg; continue
  fi
  log "journalgate did not become ready:"; tail -20 "$D/stderr" >&2; exit 1
done
cp "$CONF" "$WORK/res/journalgate.toml"
jg() { run_logged "$JG" --config "$CONF" "$@" </dev/null; }
grep 'journalgate ready' "$D/stdout" >&2
grep -q "console 127.0.0.1:$CPORT" "$D/stdout" || { log "no console listener in the ready line"; exit 1; }
URL="https://127.0.0.1:$CPORT"

ADMIN_PW=$(jg admin add bench --json | sed -n 's/.*"password":"\([^"]*\)".*/\1/p')
RW_TOKEN=$(jg token create --name bench-rw --json | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
RO_TOKEN=$(jg token create --name prometheus --read-only --json | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[ -n "$ADMIN_PW" ] && [ -n "$RW_TOKEN" ] && [ -n "$RO_TOKEN" ] || { log "admin add / token create failed"; exit 1; }
printf '%s\n' "python3 $PY login port=$CPORT name=bench password=***" >>"$CMDS"
COOKIE=$(python3 "$PY" login "port=$CPORT" name=bench "password=$ADMIN_PW") || { log "console login failed"; exit 1; }

api() { # METHOD PATH [BODY] -> body on stdout, HTTP status in $WORK/api.status
  local m=$1 p=$2 b=${3:-} data=()
  [ -n "$b" ] && data=(-H 'Content-Type: application/json' -d "$b")
  curl -sk -o - -w '\n%{http_code}' -X "$m" -H "Authorization: Bearer $RW_TOKEN" \
    "${data[@]}" "$URL$p" >"$WORK/api.out" || true
  tail -n1 "$WORK/api.out" >"$WORK/api.status"
  sed '$d' "$WORK/api.out"
}
ticks() { tree_cpu_ticks "$JG_PID"; }
rss_mb() { awk '/^VmRSS:/{printf "%.1f", $2/1024}' "/proc/$JG_PID/status" 2>/dev/null || echo "?"; }

start_sampler all "$JG_PID"
ALL_SAMPLER=$SAMPLER_PID

# ------------------------------------------------------------------ 2. mailboxes
# Each maker writes WORK/mk/<n>.json (one mailbox's JSON, with "address").
export JG CONF URL RW_TOKEN WORK
mk_cli() { "$JG" --config "$CONF" mailbox create --name "bench-$1" --json </dev/null >"$WORK/mk/$1.json" 2>>"$WORK/mk.err"; }
mk_api() {
  curl -sk -X POST -H "Authorization: Bearer $RW_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"name\":\"bench-$1\"}" "$URL/api/v1/mailboxes" >"$WORK/mk/$1.json" 2>>"$WORK/mk.err"
}
export -f mk_cli mk_api
make_boxes() { # METHOD FIRST LAST -> seconds
  local t0 t1
  t0=$(now)
  seq "$2" "$3" | xargs -P2 -I{} bash -c "mk_$1 {}"
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}'
}
SAMPLE=$SAMPLE_MB; [ "$NMB" -lt $((2 * SAMPLE)) ] && SAMPLE=$(( NMB / 2 )); [ "$SAMPLE" -ge 1 ] || SAMPLE=1
note_load mailboxes
log "mailboxes: $SAMPLE with the CLI, $SAMPLE with the API (2 at a time)"
printf '%s\n' "seq 1 $SAMPLE | xargs -P2 -I{} $JG --config $CONF mailbox create --name bench-{} --json" >>"$CMDS"
CLI_S=$(make_boxes cli 1 "$SAMPLE")
printf '%s\n' "seq $((SAMPLE + 1)) $((2 * SAMPLE)) | xargs -P2 -I{} curl -sk -X POST -H 'Authorization: Bearer <write token>' -d '{\"name\":\"bench-{}\"}' $URL/api/v1/mailboxes" >>"$CMDS"
API_S=$(make_boxes api $((SAMPLE + 1)) $((2 * SAMPLE)))
CLI_RATE=$(awk -v n="$SAMPLE" -v s="$CLI_S" 'BEGIN{printf "%.1f", n / s}')
API_RATE=$(awk -v n="$SAMPLE" -v s="$API_S" 'BEGIN{printf "%.1f", n / s}')
if awk -v a="$API_RATE" -v c="$CLI_RATE" 'BEGIN{exit !(a >= c)}'; then METHOD=api; else METHOD=cli; fi
log "CLI $CLI_RATE mailboxes/s, API $API_RATE mailboxes/s: the rest with the $METHOD"
REST_S=0
if [ "$NMB" -gt $((2 * SAMPLE)) ]; then
  if [ "$METHOD" = api ]; then
    printf '%s\n' "seq $((2 * SAMPLE + 1)) $NMB | xargs -P2 -I{} curl -sk -X POST ... $URL/api/v1/mailboxes (as above)" >>"$CMDS"
  else
    printf '%s\n' "seq $((2 * SAMPLE + 1)) $NMB | xargs -P2 -I{} $JG --config $CONF mailbox create --name bench-{} --json" >>"$CMDS"
  fi
  REST_S=$(make_boxes "$METHOD" $((2 * SAMPLE + 1)) "$NMB")
fi
REST_N=$(( NMB > 2 * SAMPLE ? NMB - 2 * SAMPLE : 0 ))
REST_RATE=$(awk -v n="$REST_N" -v s="$REST_S" 'BEGIN{ if (s > 0) printf "%.1f", n / s; else printf "–" }')
# (the API's answers end without a newline: one address per file, not per line)
for f in "$WORK"/mk/*.json; do grep -o '"address":"[^"]*"' "$f" | head -1 | cut -d'"' -f4; done >"$WORK/addresses"
NBOX=$(wc -l <"$WORK/addresses")
[ "$NBOX" = "$NMB" ] || { log "only $NBOX of $NMB mailboxes were made:"; head -5 "$WORK/mk.err" >&2; exit 1; }
log "$NBOX mailboxes in $(awk -v a="$CLI_S" -v b="$API_S" -v c="$REST_S" 'BEGIN{printf "%.1f", a+b+c}') s"
printf 'cli %s %s %s\napi %s %s %s\nrest(%s) %s %s %s\n' "$SAMPLE" "$CLI_S" "$CLI_RATE" "$SAMPLE" "$API_S" "$API_RATE" "$METHOD" "$REST_N" "$REST_S" "$REST_RATE" >"$WORK/res/mailboxes.txt"

# ------------------------------------------------------------------ 3. fill
export LG SMTP_PORT PER_MB FILL_SIZE FILL_C
fill_one() {
  "$LG" smtp --addr "127.0.0.1:$SMTP_PORT" --to "$1" --count "$PER_MB" --size "$FILL_SIZE" \
    --concurrency "$FILL_C" --timeout 300 >"$WORK/fill/$1.json" 2>>"$WORK/fill.err" || true
}
export -f fill_one
settle
note_load fill
log "fill: $(human_n "$NMSG") messages of $FILL_SIZE bytes, $PER_MB per mailbox (loadgen C=$FILL_C, $FILL_P at a time)"
printf '%s\n' "xargs -P$FILL_P -I{} $LG smtp --addr 127.0.0.1:$SMTP_PORT --to {} --count $PER_MB --size $FILL_SIZE --concurrency $FILL_C --timeout 300 <addresses  (one per mailbox: $NBOX runs)" >>"$CMDS"
T0=$(ticks); F0=$(now)
xargs -P"$FILL_P" -I{} bash -c 'fill_one {}' <"$WORK/addresses"
F1=$(now); T1=$(ticks)
FILL_OK=$(cat "$WORK"/fill/*.json | grep -o '"messages":[0-9]*' | cut -d: -f2 | awk '{s+=$1} END{print s+0}')
FILL_S=$(awk -v a="$F0" -v b="$F1" 'BEGIN{printf "%.2f", b - a}')
FILL_RATE=$(awk -v n="$FILL_OK" -v s="$FILL_S" 'BEGIN{printf "%.0f", n / s}')
FILL_CPU=$(awk -v a="$T0" -v b="$T1" -v n="$FILL_OK" -v hz="$HZ" 'BEGIN{printf "%.3f", (b - a) / hz * 1000 / (n > 0 ? n : 1)}')
log "fill: $FILL_OK accepted in $FILL_S s ($FILL_RATE msg/s, server CPU $FILL_CPU ms/msg)"
[ "$FILL_OK" = "$NMSG" ] || { log "warning: $((NMSG - FILL_OK)) fill messages not accepted:"; grep -ho '"errors":\[[^]]*\]' "$WORK"/fill/*.json | sort | uniq -c | head -5 >&2; }
printf '%s\n' "python3 $PY sum port=$CPORT" >>"$CMDS"
read -r WAITING WBOXES METRICS_BYTES < <(python3 "$PY" sum "port=$CPORT")
log "/metrics: $WAITING messages waiting in $WBOXES mailboxes ($METRICS_BYTES bytes)"
echo "$FILL_OK $FILL_S $FILL_RATE $FILL_CPU $WAITING $WBOXES" >"$WORK/res/fill.txt"
DU_DATA=$(du -sm "$D/data" 2>/dev/null | cut -f1)
RSS_FILLED=$(rss_mb)

# ------------------------------------------------------------------ 4. latency
settle
wait_quiet 300 latency
note_load latency
LB0=$(sys_busy); LO0=$(ours); LT0=$(now)
start_sampler latency "$JG_PID"
LAT_PATHS="/healthz / /metrics /api/v1/status /api/v1/mailboxes"
for p in $LAT_PATHS; do
  extra=()
  case "$p" in
    /) extra=("cookie=$COOKIE") ;;
    /api/*) extra=("token=$RO_TOKEN") ;;
  esac
  for mode in keep fresh; do
    tag=$(echo "lat$p-$mode" | tr '/' '_')
    printf '%s\n' "python3 $PY lat port=$CPORT path=$p n=$LAT_N mode=$mode${extra:+ ${extra[0]%%=*}=<...>}" >>"$CMDS"
    t0=$(ticks)
    python3 "$PY" lat "port=$CPORT" "path=$p" "n=$LAT_N" "mode=$mode" "${extra[@]}" >"$WORK/res/$tag.lat" \
      || { log "latency $p $mode failed"; : >"$WORK/res/$tag.lat"; }
    t1=$(ticks)
    awk -v a="$t0" -v b="$t1" -v n="$((LAT_N + 3))" -v hz="$HZ" 'BEGIN{printf "%.2f\n", (b - a) / hz * 1000 / n}' >"$WORK/res/$tag.cpu"
    log "GET $p ($mode): $(cat "$WORK/res/$tag.lat"); server CPU $(cat "$WORK/res/$tag.cpu") ms/request"
  done
done
stop_sampler latency
LB1=$(sys_busy); LO1=$(ours); LT1=$(now)
foreign_note latency "$LB0" "$LB1" "$LO0" "$LO1" "$(awk -v a="$LT0" -v b="$LT1" 'BEGIN{print b - a}')"
RSS_LAT=$(cut -d' ' -f1 "$WORK/res/latency.peak")

# ------------------------------------------------------------------ 5. ingest
SCRAPE_PATHS="/metrics,/,/api/v1/status"
send() { # NAME ADDR COUNT
  run_logged timeout $((CASE_TIMEOUT + 60)) "$LG" smtp --addr "127.0.0.1:$SMTP_PORT" --to "$2" --count "$3" \
    --size "$INGEST_SIZE" --concurrency "$INGEST_C" --timeout "$CASE_TIMEOUT" \
    >"$WORK/res/$1.json" 2>"$WORK/res/$1.err" || true
}
new_box() { # LABEL -> "id address"
  local out
  out=$(api POST /api/v1/mailboxes "{\"name\":\"ingest-$1\"}")
  local id addr
  id=$(printf '%s' "$out" | grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4)
  addr=$(printf '%s' "$out" | grep -o '"address":"[^"]*"' | head -1 | cut -d'"' -f4)
  [ -n "$id" ] && [ -n "$addr" ] && printf '%s %s\n' "$id" "$addr"
}
drop_box() { # ID LABEL: suspend + delete (its messages go), time noted
  local t0 t1
  t0=$(now)
  api PATCH "/api/v1/mailboxes/$1" '{"status":"suspended"}' >/dev/null
  api DELETE "/api/v1/mailboxes/$1" >/dev/null
  t1=$(now)
  [ "$(cat "$WORK/api.status")" = 204 ] || log "warning: deleting mailbox $1 answered $(cat "$WORK/api.status")"
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f\n", b - a}' >>"$WORK/res/delete.secs"
}
start_scraper() { # NAME
  : >"$WORK/res/$1.scrape"
  python3 "$PY" scrape "port=$CPORT" "paths=$SCRAPE_PATHS" "cookie=$COOKIE" "token=$RO_TOKEN" interval=1 \
    "out=$WORK/res/$1.scrape" &
  SCRAPER_PID=$!
}
stop_scraper() {
  kill -TERM "$SCRAPER_PID" 2>/dev/null || true
  wait "$SCRAPER_PID" 2>/dev/null || true
  SCRAPER_PID=""
}

# calibration (also warms the SMTP path): sets the size of every run
box=$(new_box calibration) || true
CAL_ID=${box%% *} CAL_ADDR=${box#* }
[ -n "$box" ] && [ -n "$CAL_ADDR" ] || { log "POST /api/v1/mailboxes failed: $(cat "$WORK/api.out")"; exit 1; }
settle
note_load calibration
log "calibration: $CALIB_N messages of $INGEST_SIZE bytes at C=$INGEST_C"
send calibration "$CAL_ADDR" "$CALIB_N"
CAL_RATE=$(jget "$WORK/res/calibration.json" msgs_per_s)
[ "$(jget "$WORK/res/calibration.json" messages)" = "$CALIB_N" ] || { log "calibration failed: $(cat "$WORK/res/calibration.json")"; exit 1; }
drop_box "$CAL_ID"
if [ -n "${BENCH_INGEST_N:-}" ]; then
  INGEST_N=$BENCH_INGEST_N
else
  INGEST_N=$(awk -v r="$CAL_RATE" -v s="$INGEST_SECS" -v m="$INGEST_MIN" 'BEGIN{ n = int(r * s / 1000 + 0.5) * 1000; if (n < m) n = m; print n }')
fi
log "calibration: $CAL_RATE msg/s; each run sends $(human_n "$INGEST_N") messages"

ORDER=()
for i in $(seq "$PAIRS"); do
  if [ $((i % 2)) = 1 ]; then ORDER+=("base-$i" "scraped-$i"); else ORDER+=("scraped-$i" "base-$i"); fi
done
start_sampler ingest "$JG_PID"
for name in "${ORDER[@]}"; do
  check_budget "$name" || break
  box=$(new_box "$name") || true
  BOX_ID=${box%% *} BOX_ADDR=${box#* }
  [ -n "$box" ] && [ -n "$BOX_ADDR" ] || { log "$name: no mailbox: $(cat "$WORK/api.out")"; continue; }
  settle
  wait_quiet 300 "$name"
  note_load "$name"
  b0=$(sys_busy); o0=$(ours)
  if [ "${name%%-*}" = scraped ]; then
    printf '%s\n' "python3 $PY scrape port=$CPORT paths=$SCRAPE_PATHS cookie=<session> token=<read-only> interval=1 &" >>"$CMDS"
    start_scraper "$name"
    sleep 1.5    # the scraper is at work (first round done) before the SMTP load starts
  fi
  log "$name: $(human_n "$INGEST_N") messages of $INGEST_SIZE bytes at C=$INGEST_C"
  t0=$(ticks)
  send "$name" "$BOX_ADDR" "$INGEST_N"
  t1=$(ticks)
  b1=$(sys_busy); o1=$(ours)
  [ -n "$SCRAPER_PID" ] && stop_scraper
  ok=$(jget "$WORK/res/$name.json" messages)
  foreign_note "$name" "$b0" "$b1" "$o0" "$o1" "$(jget "$WORK/res/$name.json" seconds)"
  awk -v t0="$t0" -v t1="$t1" -v n="${ok:-0}" -v hz="$HZ" 'BEGIN{ s = (t1 - t0) / hz; printf "%.3f %.2f\n", (n > 0 ? s * 1000 / n : 0), s }' >"$WORK/res/$name.cpu"
  log "$name: $(jget "$WORK/res/$name.json" msgs_per_s) msg/s ($ok accepted, $(jget "$WORK/res/$name.json" failures) failed); server CPU $(cut -d' ' -f1 "$WORK/res/$name.cpu") ms/msg; other work $(cut -d' ' -f2 "$WORK/res/$name.foreign") cores"
  drop_box "$BOX_ID"
done
stop_sampler ingest

kill "$ALL_SAMPLER" 2>/dev/null; wait "$ALL_SAMPLER" 2>/dev/null || true
RSS_ALL=$(awk '{ if ($1>r) r=$1 } END{ printf "%.1f", r/1024 }' "$WORK/res/all.mem")
grep -iE 'error|panic' "$D/stderr" 2>/dev/null | head -10 >"$WORK/res/errors.txt" || true
stop_jg

# ------------------------------------------------------------------ report
R="$WORK/res"
lat_cell() { # TAG KEY
  [ -s "$R/$1.lat" ] || { echo "–"; return; }
  jget "$R/$1.lat" "$2"
}
LAT_TABLE="$WORK/lat.md"
{
  echo "| Request | Connection | p50 ms | p95 ms | p99 ms | max ms | mean ms | Body bytes | Server CPU ms/req | Status |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
  for p in $LAT_PATHS; do
    case "$p" in
      /) label="GET / (dashboard, session cookie)" ;;
      /metrics) label="GET /metrics (loopback, no token)" ;;
      /healthz) label="GET /healthz (floor: TLS + HTTP)" ;;
      *) label="GET $p (read-only token)" ;;
    esac
    for mode in keep fresh; do
      tag=$(echo "lat$p-$mode" | tr '/' '_')
      conn="keep-alive"; [ "$mode" = fresh ] && conn="fresh TLS"
      st=$(sed -n 's/.*"status":{\([^}]*\)}.*/\1/p' "$R/$tag.lat" 2>/dev/null | tr -d '"')
      printf '| %s | %s | %s | **%s** | %s | %s | %s | %s | %s | %s |\n' "$label" "$conn" \
        "$(lat_cell "$tag" p50_ms)" "$(lat_cell "$tag" p95_ms)" "$(lat_cell "$tag" p99_ms)" \
        "$(lat_cell "$tag" max_ms)" "$(lat_cell "$tag" mean_ms)" "$(human_n "$(lat_cell "$tag" bytes)")" \
        "$(cat "$R/$tag.cpu" 2>/dev/null || echo –)" "${st:-–}"
    done
  done
} >"$LAT_TABLE"

# scrape statistics of one run: "n_metrics n_dash n_status p50/p95 per path, cpu, late"
scrape_note() { # NAME
  local f="$R/$1.scrape" t0 t1
  [ -s "$f" ] || { echo ""; return; }
  t0=$(awk '{print $2}' "$R/$1.window"); t1=$(awk '{print $3}' "$R/$1.window")
  awk -v t0="$t0" -v t1="$t1" '
    /^#/ { cpu = $3; late = $7; next }
    { all++; if ($1 >= t0 && $1 <= t1) { n[$2]++; v[$2, n[$2]] = $3 }; if ($4 != 200) bad++ }
    function p(path, q,   m, i, j, t, a) {
      m = n[path]; if (!m) return "–"
      for (i = 1; i <= m; i++) a[i] = v[path, i]
      for (i = 2; i <= m; i++) { t = a[i]; j = i - 1; while (j > 0 && a[j] > t) { a[j+1] = a[j]; j-- } a[j+1] = t }
      return sprintf("%.0f", a[int((m - 1) * q + 0.5) + 1])
    }
    END {
      printf "%d /metrics (p50 %s, p95 %s ms), %d dashboards (p50 %s, p95 %s ms), %d status (p50 %s, p95 %s ms) during the run; non-200: %d; scraper CPU %.2f s, late ticks %d",
        n["/metrics"], p("/metrics", .5), p("/metrics", .95), n["/"], p("/", .5), p("/", .95),
        n["/api/v1/status"], p("/api/v1/status", .5), p("/api/v1/status", .95), bad + 0, cpu, late
    }' "$f"
}
# the run's window (wall clock) from loadgen: last_250_unix - seconds .. last_250_unix
for name in "${ORDER[@]}"; do
  f="$R/$name.json"; [ -s "$f" ] || continue
  awk -v l="$(jget "$f" last_250_unix)" -v s="$(jget "$f" seconds)" 'BEGIN{ printf "%s %.3f %.3f\n", "w", l - s, l }' >"$R/$name.window"
done

INGEST_TABLE="$WORK/ingest.md"
{
  echo "| Run | Console traffic | Messages | Seconds | msg/s | Server CPU ms/msg | Server CPU s | Other work, cores | Failures | Scrapes during the run |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
  for name in "${ORDER[@]}"; do
    f="$R/$name.json"; [ -s "$f" ] || continue
    traffic="none"; [ "${name%%-*}" = scraped ] && traffic="/metrics + dashboard + /api/v1/status, 1/s each"
    printf '| %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s |\n' "$name" "$traffic" \
      "$(human_n "$(jget "$f" messages)")" "$(jget "$f" seconds)" "$(human_n "$(fmt0 "$(jget "$f" msgs_per_s)")")" \
      "$(cut -d' ' -f1 "$R/$name.cpu")" "$(cut -d' ' -f2 "$R/$name.cpu")" "$(cut -d' ' -f2 "$R/$name.foreign" 2>/dev/null || echo –)" \
      "$(jget "$f" failures)" "$(scrape_note "$name")"
  done
} >"$INGEST_TABLE"

rates() { # base|scraped -> msg/s of each run, one a line
  for name in "${ORDER[@]}"; do
    [ "${name%%-*}" = "$1" ] && [ -s "$R/$name.json" ] && jget "$R/$name.json" msgs_per_s
  done
  return 0
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print ""; exit } if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
MED_B=$(rates base | median); MED_S=$(rates scraped | median)
SPREAD_B=$(rates base | awk -v m="$MED_B" 'NR == 1 { lo = hi = $1 } { if ($1 < lo) lo = $1; if ($1 > hi) hi = $1 } END { if (m > 0 && NR) printf "%.1f", (hi - lo) / m * 100 }')
SPREAD_S=$(rates scraped | awk -v m="$MED_S" 'NR == 1 { lo = hi = $1 } { if ($1 < lo) lo = $1; if ($1 > hi) hi = $1 } END { if (m > 0 && NR) printf "%.1f", (hi - lo) / m * 100 }')
DROP=$(awk -v b="$MED_B" -v s="$MED_S" 'BEGIN{ if (b > 0 && s > 0) printf "%.1f", (1 - s / b) * 100 }')
PAIR_DROPS=""
for i in $(seq "$PAIRS"); do
  b=$(jget "$R/base-$i.json" msgs_per_s 2>/dev/null); s=$(jget "$R/scraped-$i.json" msgs_per_s 2>/dev/null)
  [ -n "$b" ] && [ -n "$s" ] && PAIR_DROPS+="${PAIR_DROPS:+, }pair $i: $(awk -v b="$b" -v s="$s" 'BEGIN{printf "%+.1f %%", (1 - s / b) * 100}')"
done
CPU_B=$(for n in "${ORDER[@]}"; do if [ "${n%%-*}" = base ] && [ -s "$R/$n.cpu" ]; then cut -d' ' -f1 "$R/$n.cpu"; fi; done | median)
CPU_S=$(for n in "${ORDER[@]}"; do if [ "${n%%-*}" = scraped ] && [ -s "$R/$n.cpu" ]; then cut -d' ' -f1 "$R/$n.cpu"; fi; done | median)
# server CPU per second of scraping, from the latency phase (keep-alive figures)
SCRAPE_CPU=$(awk -v a="$(cat "$R/lat_metrics-keep.cpu" 2>/dev/null)" -v b="$(cat "$R/lat_-keep.cpu" 2>/dev/null)" \
  -v c="$(cat "$R/lat_api_v1_status-keep.cpu" 2>/dev/null)" 'BEGIN{ printf "%.0f", a + b + c }')

SUMMARY="$WORK/summary.md"
{
  echo "- Waiting during the measurements: $(human_n "$WAITING") messages in $(human_n "$WBOXES") gateway mailboxes (from /metrics after the fill; $((NMSG / NMB)) × $FILL_SIZE bytes each; data dir ${DU_DATA:-?} MB)."
  echo "- Mailbox creation: CLI \`mailbox create\` $CLI_RATE/s, API \`POST /api/v1/mailboxes\` $API_RATE/s (each $SAMPLE mailboxes, 2 at a time); the other $(human_n "$REST_N") with the $METHOD at $REST_RATE/s."
  echo "- Fill: $(human_n "$FILL_OK") messages in $FILL_S s = $(human_n "$FILL_RATE") msg/s (server CPU $FILL_CPU ms/msg)."
  echo "- Server RSS: $RSS_FILLED MB after the fill; peak $RSS_LAT MB during the latency runs; peak $RSS_ALL MB over the whole run."
  if [ -n "$MED_B" ] && [ -n "$MED_S" ]; then
    verdict=$(awk -v d="$DROP" 'BEGIN{ print (d <= 2.0) ? "met" : "MISSED" }')
    echo "- Ingest (C=$INGEST_C, $INGEST_SIZE bytes, $(human_n "$INGEST_N") messages per run): baseline median **$(human_n "$(fmt0 "$MED_B")") msg/s** (spread $SPREAD_B %), scraped median **$(human_n "$(fmt0 "$MED_S")") msg/s** (spread $SPREAD_S %): drop **$DROP %** against a budget of 2 %: **$verdict**. Drop per pair (negative: faster while scraped): $PAIR_DROPS."
    echo "- Server CPU per message: baseline median $CPU_B ms, scraped median $CPU_S ms. One scrape round (/metrics + dashboard + /api/v1/status) costs the server about $SCRAPE_CPU ms of CPU (latency phase, keep-alive), i.e. $(awk -v c="$SCRAPE_CPU" 'BEGIN{printf "%.1f", c / 10}') % of one core at 1 round/s ($(awk -v c="$SCRAPE_CPU" 'BEGIN{printf "%.1f", c / 20}') % of the 2 cores)."
    noise=$(awk -v a="$SPREAD_B" -v b="$SPREAD_S" 'BEGIN{ print (a > 2 || b > 2) ? 1 : 0 }')
    [ "$noise" = 1 ] && echo "- Noise: the runs of one kind differ by more than 2 % among themselves, so a drop of a few % is within the noise of this machine; read the verdict with that in mind."
  else
    echo "- Ingest: not measured (see the log)."
  fi
  FOREIGN_MAX=$(cat "$R"/*-[0-9]*.foreign 2>/dev/null | awk '{ if ($2 > m) m = $2 } END { printf "%.2f", m }')
  WAITED=$(awk '$2 > 0 { printf "%s%s %s s", sep, $1, $2; sep = ", " }' "$R/waits.txt")
  echo "- Other work on the machine (CPU not used by this benchmark's processes, kernel I/O threads included): $(cut -d' ' -f2 "$R/latency.foreign" 2>/dev/null || echo ?) cores during the latency runs, at most $FOREIGN_MAX cores during an ingest run; waits for the machine to be quiet: ${WAITED:-none}."
  awk -v m="$FOREIGN_MAX" 'BEGIN{ exit !(m > 0.3) }' && echo "- **Warning:** other work used more than 0.3 cores during at least one ingest run (see the table): those runs are disturbed."
  [ -s "$R/delete.secs" ] && echo "- Removing a run's mailbox (PATCH suspended + DELETE, which reconciles the index of every mailbox): $(sort -g "$R/delete.secs" | tr '\n' ' ' | sed 's/ $//') s."
  if [ "$UNCOMMITTED" -gt 0 ]; then echo "- The binary was built from a work tree with uncommitted changes in src/ (another engineer's work in progress)."; fi
} >"$SUMMARY"

DATE=$(date +%F)
SUFFIX="" QNOTE="" QARG=""
if [ "$QUICK" = 1 ]; then SUFFIX="-quick" QNOTE=" (--quick)" QARG=" --quick"; fi
ARGS_NOTE="bench/console.sh$QARG"
[ "$BUILD" = 0 ] && ARGS_NOTE+=" --no-build"
[ "$LOOPFS" = 0 ] && ARGS_NOTE+=" --rootfs"
OUT=$(results_file "console-$DATE$SUFFIX.md")
{
  echo "# journalgate console benchmark, $(date -u +'%F %H:%M UTC')$QNOTE"
  echo
  echo "Hardware: $HW_LINE"
  echo "Filesystem: $FS_NOTE"
  echo
  echo "Versions: journalgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no commit)') ($BIN_NOTE$([ "$UNCOMMITTED" -gt 0 ] && echo "; $UNCOMMITTED uncommitted or untracked paths under src/ and Cargo.*")), $(python3 --version 2>&1), $(curl --version | head -1 | cut -d' ' -f1-2), $(rustc --version 2>/dev/null)"
  echo
  echo "Command: \`$ARGS_NOTE\` — $(human_n "$NMB") gateway mailboxes, $(human_n "$NMSG") messages of $FILL_SIZE bytes waiting ($PER_MB each);"
  echo "latency: $LAT_N sequential requests per case; ingest: $PAIRS pairs of runs at C=$INGEST_C, $(human_n "$INGEST_N") messages of $INGEST_SIZE bytes each."
  echo
  echo "## Summary"
  echo
  cat "$SUMMARY"
  echo
  echo "## Latency, everything waiting"
  echo
  cat "$LAT_TABLE"
  echo
  echo "Client: Python http.client + ssl on the same machine (HTTP/1.1; TLS 1.3 with the server's self-signed certificate);"
  echo "$LAT_N requests after 3 unmeasured ones. keep-alive: one connection, time from sending the request to the end of the body."
  echo "fresh TLS: a new TCP connection and TLS handshake per request, inside the time. Server CPU: the server's utime+stime over"
  echo "the batch (all threads, /proc) divided by the requests (warm-up included); the client's CPU is not in it."
  echo
  echo "## Ingest with and without console traffic"
  echo
  cat "$INGEST_TABLE"
  echo
  echo "msg/s: \`loadgen smtp\` (pipelining, $INGEST_C connections), messages answered 250 / seconds from the first connection to the end."
  echo "Each run goes into a fresh gateway mailbox, which is suspended and deleted through the API after the run (so the next"
  echo "run again sees $(human_n "$NMB") mailboxes and $(human_n "$WAITING") waiting messages). Scraped runs: the scraper starts 1.5 s before"
  echo "loadgen and stops after it; it GETs /metrics (no token: loopback is in scrape_networks), / (session cookie) and"
  echo "/api/v1/status (read-only token), one after another, every second, on three keep-alive connections; it runs on the same"
  echo "2 cores as the server and loadgen, so its own CPU (noted) is part of what the ingest competes with. Server CPU: utime+stime"
  echo "over the run. Other work: the whole machine's busy CPU (/proc/stat) less this benchmark's processes, per second of the run"
  echo "(each run waits first, up to 300 s, until other work uses less than a quarter of a core). Calibration run: $(human_n "$CALIB_N") messages at $(fmt0 "$CAL_RATE") msg/s (sizes the runs to about $INGEST_SECS s)."
  echo
  echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  report_errors "" "$R/errors.txt"
  echo "## Mailbox creation (method, mailboxes, seconds, per second)"
  echo
  echo '```'
  cat "$R/mailboxes.txt"
  echo '```'
  echo
  echo "## Raw latency output"
  echo
  echo '```'
  for f in "$R"/*.lat; do printf '%s: %s\n' "$(basename "$f" .lat)" "$(cat "$f")"; done
  echo '```'
  echo
  report_appendix journalgate.toml
} >"$OUT"

echo
cat "$SUMMARY"
print_summary "$LAT_TABLE" "$INGEST_TABLE"
log "results written to $OUT (total $(( $(date +%s) - RUN_START )) s)"
