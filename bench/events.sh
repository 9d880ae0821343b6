#!/usr/bin/env bash
# Events benchmark, from one run with its own `skiff server`: CloudEvents accepted/s at a
# Broker beside the same requests posted straight to the subscriber Service (through the
# ingress) and to its instance (wrk inside its network namespace), then how fast and how late
# the dispatcher delivers a batch of events, with the daemon's CPU per event.
#
#   bench/events.sh [--seconds S] [--connections LIST] [--events N] [--out FILE] ...
#
# Builds `skiff` and `serving-bench` (package skiff-bench-serving, bench/serving) in release
# mode and runs the latter's `events` part (`--only events`). Prints Markdown (ready for
# BENCHMARKS.md) on stdout; the build and progress go to stderr. See bench/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/events.sh [options]

  --seconds S              seconds per wrk run (default 10)
  --warmup S               seconds of each target's warmup run, at the largest connection
                           count (default 2; 0: none)
  --connections LIST       wrk's connection counts, comma-separated (default 1,8,32)
  --events N               events in the delivery batch (default 20000)
  --batch-connections N    connections the batch is posted over (default 32)
  --sub-cc N               the subscriber's containerConcurrency (default 32)
  --sub-instances N        the subscriber's instances, min-scale = max-scale (default 1)
  --drain-timeout S        longest wait for a backlog to be delivered (default 600)
  --out FILE               also write the Markdown to FILE
  --raw FILE               every figure as JSON to FILE (each wrk run; each batch event's
                           send, 202 and delivery times; the metric readings)
  --keep-logs DIR          copy the daemon's log and wrk's outputs to DIR
  --dir DIR                where the temporary working directory goes (default: $TMPDIR or
                           /tmp); the daemon's data directory, so its SQLite queue, is there
  -h, --help               this text

Needs root, runc, wrk, nsenter, /usr/bin/busybox (busybox-static) and cargo:
  apt-get install -y runc wrk busybox-static
A run with the defaults takes about 2.5 minutes after the build.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="bench/events.sh"
for a in "$@"; do INVOCATION+=" $(printf '%q' "$a")"; done

log() { printf '[events.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

DIR=${TMPDIR:-/tmp}
PASS=()
need() { [[ $# -ge 2 && -n $2 ]] || { usage >&2; die "$1 needs a value"; }; }
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --seconds) need "$@"; PASS+=(--events-seconds "$2"); shift 2 ;;
        --warmup) need "$@"; PASS+=(--events-warmup "$2"); shift 2 ;;
        --connections) need "$@"; PASS+=(--events-connections "$2"); shift 2 ;;
        --events) need "$@"; PASS+=(--events-batch "$2"); shift 2 ;;
        --batch-connections) need "$@"; PASS+=(--events-batch-connections "$2"); shift 2 ;;
        --sub-cc) need "$@"; PASS+=(--events-sub-cc "$2"); shift 2 ;;
        --sub-instances) need "$@"; PASS+=(--events-sub-instances "$2"); shift 2 ;;
        --drain-timeout) need "$@"; PASS+=(--events-drain-timeout "$2"); shift 2 ;;
        --out | --raw | --keep-logs) need "$@"; PASS+=("$1" "$2"); shift 2 ;;
        --dir) need "$@"; DIR=$2; shift 2 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[[ $(id -u) == 0 ]] || die "needs root (the daemon runs containers: overlay mounts, network namespaces, cgroups)"
missing=()
command -v runc >/dev/null || missing+=("runc (apt-get install -y runc)")
command -v wrk >/dev/null || missing+=("wrk (apt-get install -y wrk)")
command -v nsenter >/dev/null || missing+=("nsenter (apt-get install -y util-linux)")
[[ -x /usr/bin/busybox ]] || missing+=("/usr/bin/busybox (apt-get install -y busybox-static)")
command -v cargo >/dev/null || missing+=("cargo")
if ((${#missing[@]})); then
    for m in "${missing[@]}"; do log "missing: $m"; done
    die "install what is missing; nothing is installed for you"
fi
if ldd /usr/bin/busybox >/dev/null 2>&1; then
    die "/usr/bin/busybox is dynamically linked: the image needs the static one (apt-get install -y busybox-static)"
fi

log "building skiff and serving-bench (release)"
# Two builds, as in serving.sh: built together, the packages would unify features differently
# and each would be rebuilt every time.
cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin skiff >&2
cargo build --release --manifest-path "$ROOT/Cargo.toml" -p skiff-bench-serving >&2
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/serving-bench"
SKIFF="$TARGET/release/skiff"
[[ -x $BIN ]] || die "$BIN was not built"
[[ -x $SKIFF ]] || die "$SKIFF was not built"

# The harness stops its daemon (and with it the subscriber's instances) on exit, failure and
# SIGINT/SIGTERM; if it is killed outright, `--cleanup-only` on the same working directory
# stops what it left running and removes the rest.
WORK=$(mktemp -d "$DIR/skiff-bench-events.XXXXXX")
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
"$BIN" --only events --invocation "$INVOCATION" --work-dir "$WORK" --skiff "$SKIFF" \
    ${PASS[@]+"${PASS[@]}"} &
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
