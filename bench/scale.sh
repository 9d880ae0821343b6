#!/usr/bin/env bash
# Control-plane scale benchmark, from one run: at 10 and at 1,000 idle Services (each size on a
# fresh `skiff server`), apply latency, a cold start, the time from a `kill -9` restart until
# every Service is routed, and the daemon's memory per idle Service.
#
#   bench/scale.sh [--sizes 10,1000] [--applies N] [--colds N] [--idle-seconds S] [--out FILE]
#
# Builds `skiff` and `scale-bench` (package skiff-bench-scale, bench/scale) in release mode and
# runs the latter. Prints the figures as JSON on stdout; the build, progress and a summary
# table go to stderr. See bench/README.md for what is measured.
set -euo pipefail

usage() {
    cat <<'EOF2'
usage: bench/scale.sh [options]

  --sizes N,N,...     counts of idle Services, each on a fresh daemon (default 10,1000)
  --applies N         timed applies at each size (default 50)
  --colds N           cold starts at each size (default 10)
  --idle-seconds S    window over which the idle daemon's CPU is measured (default 5)
  --out FILE          also write the JSON to FILE

Needs root, runc, /usr/bin/busybox (busybox-static) and cargo:
  apt-get install -y runc busybox-static
A run at 10 and 1,000 takes about 3 minutes after the build.
EOF2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="bench/scale.sh"
for a in "$@"; do INVOCATION+=" $(printf '%q' "$a")"; done
for a in "$@"; do
    case "$a" in
        -h | --help) usage; exit 0 ;;
        --skiff | --invocation | --code) echo "scale.sh: $a is for the harness itself" >&2; exit 2 ;;
    esac
done

log() { printf '[scale.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (the daemon runs containers: overlay mounts, network namespaces, cgroups)"
command -v runc >/dev/null || die "runc is missing (apt-get install -y runc)"
command -v cargo >/dev/null || die "cargo is missing"
[[ -x /usr/bin/busybox ]] || die "/usr/bin/busybox is missing (apt-get install -y busybox-static)"

log "building skiff and scale-bench (release)"
# Two builds, not one: built together, the packages would unify features differently and each
# would be rebuilt every time.
cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin skiff >&2
cargo build --release --manifest-path "$ROOT/Cargo.toml" -p skiff-bench-scale >&2
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/scale-bench"
SKIFF="$TARGET/release/skiff"
[[ -x $BIN ]] || die "$BIN was not built"
[[ -x $SKIFF ]] || die "$SKIFF was not built"
CODE=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)

# A private copy of the binary: a rebuild of target/release mid-run must not swap it.
COPY=$(mktemp -d "${TMPDIR:-/tmp}/skiff-bench-scale.XXXXXX")
CHILD=""
finish() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    rm -rf "$COPY"
    ((rc == 0)) || log "failed (exit $rc)"
    exit "$rc"
}
trap finish EXIT
forward() { if [[ -n $CHILD ]]; then kill "-$1" "$CHILD" 2>/dev/null || true; else exit 130; fi; }
trap 'forward INT' INT
trap 'forward TERM' TERM
cp "$SKIFF" "$COPY/skiff"

STARTED=$SECONDS
"$BIN" --invocation "$INVOCATION" --code "$CODE" --skiff "$COPY/skiff" "$@" &
CHILD=$!
rc=0
while :; do
    set +e
    wait "$CHILD"
    rc=$?
    set -e
    kill -0 "$CHILD" 2>/dev/null || break
done
CHILD=""
log "scale-bench exited with $rc after $((SECONDS - STARTED)) s"
exit "$rc"
