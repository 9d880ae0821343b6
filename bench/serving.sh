#!/usr/bin/env bash
# Serving benchmark, from one run with its own `skiff server`: cold start (scale from zero to
# first byte) beside bare runc on the same layers; the router's added latency and throughput,
# with request logs and traces off and on (a second daemon), beside a direct connection and
# nginx; and a 10x burst of clients.
#
#   bench/serving.sh [--cold-runs N] [--router-reps N] [--router-seconds S]
#                    [--router-trace-ratio R] [--burst-window W]
#                    [--only PARTS] [--out FILE] [--raw FILE] [--keep-logs DIR] [--dir DIR] ...
#
# Builds `skiff` and `serving-bench` (package skiff-bench-serving, bench/serving) in release
# mode and runs the latter. Prints Markdown (ready for BENCHMARKS.md) on stdout; the build and
# progress go to stderr. See bench/README.md for what each part measures.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/serving.sh [options]

  --cold-runs N          cold starts per case, skiff and floor interleaved (default 60;
                         at least 50 for BENCHMARKS.md)
  --cold-warmup N        unmeasured cold-start pairs first (default 2)
  --router-reps N        repetitions of each router case and mode (default 5)
  --router-seconds S     seconds per wrk run (default 5)
  --router-connections N connections of the throughput runs (default 32)
  --router-threads N     wrk threads of the throughput runs (default 2)
  --router-workers N     skiff's router threads and nginx's worker processes, the same
                         number for both (default: one per core)
  --router-backend B     server behind the router cases: auto (skiff-test-h2 when it builds,
                         else skiff-test-server), test-h2 or test-server (default auto)
  --router-trace-ratio R the skiff+telemetry case's parentbased_traceidratio ratio, 0 to 1
                         (default 0.1; 1.0 traces every request)
  --burst-from N         clients before the step (default 2)
  --burst-to N           clients after the step (default 20)
  --burst-delay-ms MS    how long the server holds each request (default 50)
  --burst-cc N           the burst Service's containerConcurrency (default 2)
  --burst-utilization P  its target-utilization-percentage (default 100)
  --burst-window W       its autoscaling.knative.dev/window, e.g. 20s (default: unset, 60s)
  --burst-before S       seconds before the step (default 20)
  --burst-after S        seconds after the step (default 40)
  --only PARTS           comma-separated subset of cold,router,burst (a partial run is
                         marked as such)
  --out FILE             also write the Markdown to FILE
  --raw FILE             every figure (each request, run, reading) as JSON to FILE
  --keep-logs DIR        copy the daemons' logs, nginx's logs and wrk's outputs to DIR
  --dir DIR              where the temporary working directory goes (default: $TMPDIR or
                         /tmp); overlay upper dirs live there

Needs root, runc, wrk, nginx, nsenter, /usr/bin/busybox (busybox-static) and cargo:
  apt-get install -y runc wrk nginx-light busybox-static
A full run takes about 6 minutes after the build.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="bench/serving.sh"
for a in "$@"; do INVOCATION+=" $(printf '%q' "$a")"; done

DIR=${TMPDIR:-/tmp}
PASS=()
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
        --work-dir | --cleanup-only | --invocation | --skiff)
            echo "serving.sh: $1 is for the harness itself" >&2; exit 2 ;;
        *) PASS+=("$1"); shift ;;
    esac
done

log() { printf '[serving.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (the daemon runs containers: overlay mounts, network namespaces, cgroups)"
missing=()
command -v runc >/dev/null || missing+=("runc (apt-get install -y runc)")
command -v wrk >/dev/null || missing+=("wrk (apt-get install -y wrk)")
command -v nginx >/dev/null || missing+=("nginx (apt-get install -y nginx-light, or nginx)")
command -v nsenter >/dev/null || missing+=("nsenter (apt-get install -y util-linux)")
[[ -x /usr/bin/busybox ]] || missing+=("/usr/bin/busybox (apt-get install -y busybox-static)")
command -v cargo >/dev/null || missing+=("cargo")
if ((${#missing[@]})); then
    for m in "${missing[@]}"; do log "missing: $m"; done
    die "install what is missing; nothing is installed for you"
fi
if [[ -x /usr/bin/busybox ]] && ldd /usr/bin/busybox >/dev/null 2>&1; then
    die "/usr/bin/busybox is dynamically linked: the images need the static one (apt-get install -y busybox-static)"
fi

log "building skiff and serving-bench (release)"
# Two builds, not one: built together, the two packages would unify features differently and
# each would be rebuilt every time.
cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin skiff >&2
cargo build --release --manifest-path "$ROOT/Cargo.toml" -p skiff-bench-serving >&2
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/serving-bench"
SKIFF="$TARGET/release/skiff"
[[ -x $BIN ]] || die "$BIN was not built"
[[ -x $SKIFF ]] || die "$SKIFF was not built"

# The harness cleans up after itself on exit, failure and SIGINT/SIGTERM; if it is killed
# outright, `--cleanup-only` on the same working directory stops what it left running.
WORK=$(mktemp -d "$DIR/skiff-bench-serving.XXXXXX")
CHILD=""
finish() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
        kill -TERM "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
    fi
    if [[ -d $WORK ]]; then
        if [[ -n $(ls -A "$WORK" 2>/dev/null) ]]; then
            log "the harness left $WORK behind: cleaning up"
            "$BIN" --cleanup-only --work-dir "$WORK" >&2 || rc=1
        fi
        rmdir "$WORK" 2>/dev/null || rm -rf "$WORK"
    fi
    ((rc == 0)) || log "failed (exit $rc)"
    exit "$rc"
}
trap finish EXIT
forward() { # forward SIGNAL: pass it to the harness, which stops everything in order
    if [[ -n $CHILD ]]; then kill "-$1" "$CHILD" 2>/dev/null || true; else exit 130; fi
}
trap 'forward INT' INT
trap 'forward TERM' TERM

STARTED=$SECONDS
"$BIN" --invocation "$INVOCATION" --work-dir "$WORK" --skiff "$SKIFF" ${PASS[@]+"${PASS[@]}"} &
CHILD=$!
# `wait` returns early when a trapped signal arrives; wait again until the harness is gone.
rc=0
while :; do
    set +e
    wait "$CHILD"
    rc=$?
    set -e
    kill -0 "$CHILD" 2>/dev/null || break
done
CHILD=""
log "serving-bench exited with $rc after $((SECONDS - STARTED)) s"
exit "$rc"
