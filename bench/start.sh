#!/usr/bin/env bash
# Instance start benchmark: start to ready of a busybox httpd instance through skiff's runtime,
# beside bare runc on the same image layers and container config, interleaved in one run.
#
#   bench/start.sh [--runs N] [--warmup N] [--out FILE] [--raw FILE] [--dir DIR] [--watch-port] [--micro N]
#
# Builds `start-bench` (package skiff-bench-runtime, bench/runtime) in release mode and runs it.
# Prints Markdown (ready for BENCHMARKS.md) on stdout; the build and progress go to stderr. See
# bench/README.md for what each case measures.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/start.sh [--runs N] [--warmup N] [--out FILE] [--raw FILE] [--dir DIR] [--watch-port] [--micro N]

  --runs N       measured runs per case, interleaved A, B, A, B, ... (default 60;
                 at least 50 for BENCHMARKS.md)
  --warmup N     unmeasured warmup pairs first (default 2)
  --out FILE     also write the Markdown to FILE
  --raw FILE     write every run's figures (phases included) as JSON to FILE
  --dir DIR      where the temporary working directory goes (default: $TMPDIR or /tmp);
                 overlay upper dirs live there, so it must be a filesystem overlayfs accepts
  --watch-port   diagnostic: also poll skiff's instance port every 1 ms to see when it opens
                 (adds load; the figures are then not for BENCHMARKS.md)
  --micro N      diagnostic: afterwards, time skiff's start steps one by one in isolation,
                 N times each, and append a table

Needs root, runc and cargo.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="bench/start.sh"
for a in "$@"; do INVOCATION+=" $(printf '%q' "$a")"; done

for a in "$@"; do
    case "$a" in
        -h | --help) usage; exit 0 ;;
    esac
done

log() { printf '[start.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (overlay mounts, network namespaces, runc)"
command -v runc >/dev/null || die "\`runc\` is missing (apt-get install -y runc)"
command -v cargo >/dev/null || die "\`cargo\` is missing"

log "building start-bench (release)"
cargo build --release --manifest-path "$ROOT/Cargo.toml" -p skiff-bench-runtime >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/start-bench"
[[ -x $BIN ]] || die "$BIN was not built"

STARTED=$SECONDS
set +e
"$BIN" --invocation "$INVOCATION" "$@"
rc=$?
set -e
log "start-bench exited with $rc after $((SECONDS - STARTED)) s"
exit "$rc"
