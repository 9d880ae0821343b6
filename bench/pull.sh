#!/usr/bin/env bash
# Image pull benchmark: `skiff images pull` beside `skopeo copy` + `tar -xf`, cold and warm,
# from a loopback CNCF distribution registry, measured with hyperfine in one run.
#
#   bench/pull.sh [--runs N] [--size-mib N] [--out DIR] [--skiff PATH]
#
# Prints Markdown (ready for BENCHMARKS.md) on stdout; progress goes to stderr. See
# bench/README.md for what each case measures and what it leaves out.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/pull.sh [--runs N] [--size-mib N] [--out DIR] [--skiff PATH]

  --runs N       measured runs per case, after one warmup run (default 10)
  --size-mib N   size of the big incompressible layer in MiB (default 50)
  --out DIR      where the hyperfine JSON, the Markdown and the logs go
                 (default: a new temporary directory, printed at the end)
  --skiff PATH   the skiff binary (default: target/release/skiff, built if missing)

Needs root, hyperfine, skopeo, docker-registry, curl, python3 and GNU tar.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="bench/pull.sh"
for a in "$@"; do INVOCATION+=" $(printf '%q' "$a")"; done

RUNS=10
SIZE_MIB=50
OUT=""
SKIFF_ARG=""
while (($#)); do
    case "$1" in
        --runs) RUNS=${2:?--runs needs a value}; shift 2 ;;
        --size-mib) SIZE_MIB=${2:?--size-mib needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --skiff) SKIFF_ARG=${2:?--skiff needs a value}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "pull.sh: unexpected argument \`$1\`" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 2 ]] || { echo "pull.sh: --runs takes a number >= 2" >&2; exit 2; }
[[ $SIZE_MIB =~ ^[0-9]+$ ]] || { echo "pull.sh: --size-mib takes a number" >&2; exit 2; }

log() { printf '[pull.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "the skiff daemon must run as root (it creates whiteout device nodes)"
for tool in hyperfine skopeo docker-registry curl python3 tar; do
    command -v "$tool" >/dev/null || die "\`$tool\` is missing (apt-get install -y hyperfine skopeo docker-registry curl)"
done
tar --version | head -n1 | grep -q 'GNU tar' || die "the peer needs GNU tar (it detects gzip by itself)"

# --- everything this script creates, and its removal -------------------------------------------
SCRIPT_STARTED=$SECONDS
OUT_IS_OURS=""
WORK=""
REGISTRY_PID=""
DAEMON_PID=""
HYPERFINE_PID="" # leader of its own process group: hyperfine and the command it is timing
stop_pid() { # stop_pid PID NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 name=$2
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n $HYPERFINE_PID ]] && kill -0 "$HYPERFINE_PID" 2>/dev/null; then
        kill -TERM -- "-$HYPERFINE_PID" 2>/dev/null || kill -TERM "$HYPERFINE_PID"
        wait "$HYPERFINE_PID" 2>/dev/null
    fi
    stop_pid "$DAEMON_PID" "skiff daemon"
    stop_pid "$REGISTRY_PID" "registry"
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ -n $OUT && -d $OUT ]]; then
            cp -f "$WORK"/*.log "$OUT"/ 2>/dev/null
        fi
        rm -rf "$WORK"
    fi
    if ((rc != 0)) && [[ -n $OUT_IS_OURS ]]; then
        rmdir "$OUT" 2>/dev/null && OUT=""
    fi
    if ((rc != 0)); then
        log "failed (exit $rc); logs, if any, are in ${OUT:-<none>}"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d "${TMPDIR:-/tmp}/skiff-bench-pull.XXXXXX")
if [[ -z $OUT ]]; then
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/skiff-bench-pull-results.XXXXXX")
    OUT_IS_OURS=1
else
    mkdir -p "$OUT"
    OUT=$(cd "$OUT" && pwd)
fi

# --- binaries ----------------------------------------------------------------------------------
if [[ -n $SKIFF_ARG ]]; then
    SKIFF_SRC=$SKIFF_ARG
    [[ -x $SKIFF_SRC ]] || die "--skiff $SKIFF_SRC is not an executable"
else
    SKIFF_SRC=$ROOT/target/release/skiff
    if [[ ! -x $SKIFF_SRC ]] || ! "$SKIFF_SRC" images --help >/dev/null 2>&1; then
        log "building skiff (cargo build --release --bin skiff)"
        (cd "$ROOT" && cargo build --release --bin skiff >&2)
    fi
fi
"$SKIFF_SRC" images --help >/dev/null 2>&1 || die "$SKIFF_SRC has no \`images\` command: rebuild it"
# Run a private copy: other developers rebuilding target/release mid-run must not swap the binary.
SKIFF=$WORK/bin/skiff
mkdir -p "$WORK/bin"
cp "$SKIFF_SRC" "$SKIFF"

SAMPLE=$ROOT/target/release/skiff-sample-image
if [[ ! -x $SAMPLE ]]; then
    log "building skiff-sample-image (cargo build --release -p skiff-test-utils --bin skiff-sample-image)"
    (cd "$ROOT" && cargo build --release -p skiff-test-utils --bin skiff-sample-image >&2)
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_until SECONDS DESCRIPTION PID COMMAND...: polls COMMAND every 0.1 s while PID lives.
wait_until() {
    local secs=$1 what=$2 pid=$3
    shift 3
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "$what: the process exited (see $OUT)"
        ((SECONDS < deadline)) || die "$what: not ready after ${secs}s"
        sleep 0.1
    done
}

# --- registry with the sample image ------------------------------------------------------------
REG_PORT=$(free_port)
mkdir -p "$WORK/registry"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$REG_PORT}
EOF
log "starting docker-registry on 127.0.0.1:$REG_PORT"
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
wait_until 60 "registry" "$REGISTRY_PID" curl -fsS "http://127.0.0.1:$REG_PORT/v2/"

REF=127.0.0.1:$REG_PORT/bench/app:v1
log "building the sample image (big layer ${SIZE_MIB} MiB) and pushing it as $REF"
"$SAMPLE" "$WORK/image" --tag v1 --big-layer-mib "$SIZE_MIB" >&2
skopeo copy -q --dest-tls-verify=false "oci:$WORK/image:v1" "docker://$REF" >&2

# --- skiff daemon ------------------------------------------------------------------------------
DATA=$WORK/skiff
mkdir -p "$DATA"
export SKIFF_DATA_DIR=$DATA
log "starting skiff server (data dir $DATA)"
"$SKIFF" server --data-dir "$DATA" --api-listen 127.0.0.1:0 --ingress-listen 127.0.0.1:0 \
    --log info >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
daemon_ready() {
    [[ -s $DATA/endpoints.json && -s $DATA/token ]] &&
        python3 - "$DATA/endpoints.json" "$DAEMON_PID" <<'EOF'
import json, sys, urllib.request
e = json.load(open(sys.argv[1]))
assert e["pid"] == int(sys.argv[2]), "endpoints.json of another daemon"
assert e["api"].startswith("http://127.0.0.1:")
urllib.request.urlopen(e["api"] + "/healthz", timeout=2).read()
EOF
}
wait_until 60 "skiff daemon" "$DAEMON_PID" daemon_ready
"$SKIFF" images ls >/dev/null 2>&1

# --- one checked pass: cold pull fills the store, rm + prune empties it ------------------------
store_entries() { find "$DATA/images/blobs/sha256" "$DATA/images/layers/sha256" -mindepth 1 -maxdepth 1 | wc -l; }
[[ $(store_entries) == 0 ]] || die "the new daemon's content store is not empty"
log "checking: one cold pull, then rm + prune must leave the store empty"
"$SKIFF" images pull "$REF" >"$OUT/first-pull.txt" 2>&1 || { cat "$OUT/first-pull.txt" >&2; die "first pull failed"; }
STORE_BYTES=$(du -sb "$DATA/images" | cut -f1)
STORE_ENTRIES=$(store_entries)
"$SKIFF" images ls -o json >"$OUT/image.json"
LAYERS_BYTES=$(python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(open(sys.argv[1]))[0]["image"]["layers"]))' "$OUT/image.json")
LAYER_COUNT=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))[0]["image"]["layers"]))' "$OUT/image.json")
"$SKIFF" images rm "$REF" >/dev/null
PRUNE_MSG=$("$SKIFF" images prune 2>&1)
AFTER_BYTES=$(du -sb "$DATA/images" | cut -f1)
[[ $(store_entries) == 0 ]] || die "prune left content behind: $(find "$DATA/images" -mindepth 3 -maxdepth 3)"
log "store after one pull: $STORE_BYTES bytes in $STORE_ENTRIES blobs+layers; prune: \"$PRUNE_MSG\"; after: $AFTER_BYTES bytes"

# --- the peer: skopeo copy into an OCI layout, then tar -xf every layer in manifest order ------
PEER=$WORK/peer
mkdir -p "$PEER"
# The layer order is read once here, outside the timed command: the peer pays no JSON parsing.
skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$PEER/oci:v1" >&2
mapfile -t PEER_LAYERS < <(python3 - "$PEER/oci" <<'EOF'
import json, os, sys
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
(m,) = [m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v1"]
man = json.load(open(os.path.join(d, "blobs", *m["digest"].split(":"))))
for l in man["layers"]:
    print(l["digest"].split(":")[1])
EOF
)
((${#PEER_LAYERS[@]} == LAYER_COUNT)) || die "skopeo's copy has ${#PEER_LAYERS[@]} layers, skiff saw $LAYER_COUNT"
PEER_CMD="skopeo copy -q --src-tls-verify=false docker://$REF oci:$PEER/oci:v1 && mkdir $PEER/rootfs"
for l in "${PEER_LAYERS[@]}"; do
    PEER_CMD+=" && tar -xf $PEER/oci/blobs/sha256/$l -C $PEER/rootfs"
done
mkdir "$PEER/rootfs"
for l in "${PEER_LAYERS[@]}"; do tar -xf "$PEER/oci/blobs/sha256/$l" -C "$PEER/rootfs"; done
ROOTFS_BYTES=$(du -sb "$PEER/rootfs" | cut -f1)
rm -rf "$PEER/oci" "$PEER/rootfs"

# --- the four cases ----------------------------------------------------------------------------
# Every prepare ends with `sync`, so no run pays for writing back the previous run's dirty pages.
SKIFF_CMD="$SKIFF images pull $REF"
EMPTY_CHECK="test -z \"\$(find $DATA/images/blobs/sha256 $DATA/images/layers/sha256 -mindepth 1 -maxdepth 1)\""
FULL_CHECK="test \"\$(find $DATA/images/blobs/sha256 $DATA/images/layers/sha256 -mindepth 1 -maxdepth 1 | wc -l)\" -eq $STORE_ENTRIES"
declare -A CMD PREP
CMD[skiff-cold]=$SKIFF_CMD
PREP[skiff-cold]="{ $SKIFF images rm $REF >/dev/null 2>&1 || true; } && $SKIFF images prune >/dev/null && $EMPTY_CHECK && sync"
CMD[skiff-warm]=$SKIFF_CMD
PREP[skiff-warm]="{ $SKIFF images rm $REF >/dev/null 2>&1 || true; } && $FULL_CHECK && sync"
CMD[peer-cold]=$PEER_CMD
PREP[peer-cold]="rm -rf $PEER/oci $PEER/rootfs && sync"
CMD[peer-warm]=$PEER_CMD
PREP[peer-warm]="rm -rf $PEER/rootfs && test -d $PEER/oci/blobs && sync"
CASES=(skiff-cold skiff-warm peer-cold peer-warm)

# registry_requests COMMAND...: runs COMMAND once and prints the requests the registry saw, e.g.
# "GET /v2/bench/app/manifests/v1, GET /v2/bench/app/blobs/sha256:fbea62f8f475…".
registry_requests() {
    local before
    before=$(wc -l <"$WORK/registry.log")
    "$@" >/dev/null 2>&1
    sleep 0.2 # the access log line is written after the response
    tail -n +"$((before + 1))" "$WORK/registry.log" |
        grep -ao '"\(GET\|HEAD\) /v2/[^ "]*' | sed -E 's/^"//; s/(sha256:[0-9a-f]{12})[0-9a-f]+/\1…/' |
        paste -sd, - | sed 's/,/, /g'
}

STARTED=$SECONDS
for c in "${CASES[@]}"; do
    case $c in
        skiff-warm)
            "$SKIFF" images pull "$REF" >/dev/null 2>&1 # fill the store once
            "$SKIFF" images rm "$REF" >/dev/null
            SKIFF_WARM_REQUESTS=$(registry_requests "$SKIFF" images pull "$REF")
            ;;
        peer-warm)
            rm -rf "$PEER/oci" && skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$PEER/oci:v1" >&2
            PEER_WARM_REQUESTS=$(registry_requests skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$PEER/oci:v1")
            ;;
    esac
    log "hyperfine: $c ($RUNS runs after 1 warmup)"
    # In its own process group (setsid runs it in place: this background job leads no group), so
    # that on failure or ^C the cleanup stops hyperfine together with the command it is timing.
    setsid hyperfine --style basic --warmup 1 --runs "$RUNS" \
        --prepare "${PREP[$c]}" --command-name "$c" \
        --export-json "$OUT/$c.json" "${CMD[$c]}" >&2 &
    HYPERFINE_PID=$!
    wait "$HYPERFINE_PID"
    HYPERFINE_PID=""
done
BENCH_SECONDS=$((SECONDS - STARTED))

# --- report ------------------------------------------------------------------------------------
cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
cpu_count=$(grep -c '^processor' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
fs_type=$(df -PT "$WORK" | awk 'NR == 2 {print $2}')
REPORT_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
REPORT_KERNEL=$(uname -r)
REPORT_CPU="$cpu_model × $cpu_count"
REPORT_MEM=$mem_total
REPORT_FS=$fs_type
REPORT_SKIFF=$("$SKIFF" --version)
REPORT_SKOPEO=$(skopeo --version)
REPORT_TAR=$(tar --version | head -n1)
REPORT_HYPERFINE=$(hyperfine --version)
REPORT_REGISTRY=$(docker-registry --version 2>&1 | head -n1)
export REPORT_DATE REPORT_KERNEL REPORT_CPU REPORT_MEM REPORT_FS REPORT_SKIFF REPORT_SKOPEO \
    REPORT_TAR REPORT_HYPERFINE REPORT_REGISTRY
export REPORT_INVOCATION=$INVOCATION REPORT_RUNS=$RUNS REPORT_SIZE_MIB=$SIZE_MIB
export REPORT_LAYERS_BYTES=$LAYERS_BYTES REPORT_LAYER_COUNT=$LAYER_COUNT
export REPORT_ROOTFS_BYTES=$ROOTFS_BYTES REPORT_STORE_BYTES=$STORE_BYTES
export REPORT_PRUNE_MSG=$PRUNE_MSG REPORT_BENCH_SECONDS=$BENCH_SECONDS
export REPORT_TOTAL_SECONDS=$((SECONDS - SCRIPT_STARTED))
export REPORT_SKIFF_WARM_REQUESTS=$SKIFF_WARM_REQUESTS REPORT_PEER_WARM_REQUESTS=$PEER_WARM_REQUESTS
export REPORT_OUT=$OUT REPORT_WORK=$WORK
export REPORT_CMD_SKIFF=${CMD[skiff-cold]} REPORT_CMD_PEER=${CMD[peer-cold]}
for c in "${CASES[@]}"; do
    v=${c//-/_}
    export "REPORT_PREP_${v^^}=${PREP[$c]}"
done

python3 - >"$OUT/pull.md" <<'EOF'
import json, os
E = os.environ
out, work = E["REPORT_OUT"], E["REPORT_WORK"]

def short(s):
    # Paths inside the temporary work dir are shown relative to it.
    return s.replace(work + "/", "$WORK/")

def mib(n):
    return f"{int(n) / 1048576:.1f} MiB"

stats = {}
for c in ["skiff-cold", "skiff-warm", "peer-cold", "peer-warm"]:
    r = json.load(open(os.path.join(out, c + ".json")))["results"][0]
    stats[c] = r

label = {
    "skiff-cold": "skiff, cold (empty store)",
    "skiff-warm": "skiff, warm (all blobs and layers present)",
    "peer-cold": "skopeo copy + tar -xf, cold (empty OCI dir)",
    "peer-warm": "skopeo copy + tar -xf, warm (OCI dir has every blob)",
}
p = print
p(f"## Image pull: skiff vs skopeo copy + tar ({E['REPORT_DATE']})")
p()
p("```")
p(E["REPORT_INVOCATION"])
p("```")
p()
p(f"- Machine: Linux {E['REPORT_KERNEL']}, {E['REPORT_CPU']}, {E['REPORT_MEM']} RAM, work dir on {E['REPORT_FS']}")
p(f"- Versions: {E['REPORT_SKIFF']}; {E['REPORT_SKOPEO']}; {E['REPORT_TAR']}; {E['REPORT_HYPERFINE']}; registry: {E['REPORT_REGISTRY']}")
p(f"- Image: {E['REPORT_LAYER_COUNT']} gzip layers, {mib(E['REPORT_LAYERS_BYTES'])} compressed "
  f"({int(E['REPORT_LAYERS_BYTES'])} bytes, incl. a {E['REPORT_SIZE_MIB']} MiB incompressible layer), "
  f"{mib(E['REPORT_ROOTFS_BYTES'])} unpacked; served by a loopback `docker-registry` over plain HTTP")
p(f"- hyperfine: 1 warmup + {E['REPORT_RUNS']} runs per case, `sync` before every run; "
  f"hyperfine took {E['REPORT_BENCH_SECONDS']} s, the whole script {E['REPORT_TOTAL_SECONDS']} s")
p()
p("| Case | Mean ± σ (s) | Median (s) | Min (s) | Max (s) |")
p("|---|---|---|---|---|")
for c, r in stats.items():
    p(f"| {label[c]} | {r['mean']:.3f} ± {r['stddev']:.3f} | {r['median']:.3f} | {r['min']:.3f} | {r['max']:.3f} |")
p()
for kind in ["cold", "warm"]:
    s, q = stats[f"skiff-{kind}"]["median"], stats[f"peer-{kind}"]["median"]
    faster = f"skiff {q / s:.1f}× faster" if s < q else f"skiff {s / q:.1f}× slower"
    p(f"- skiff / peer, {kind} (medians): {s:.3f} / {q:.3f} = **{s / q:.2f}** ({faster})")
p()
p("What each case does:")
p()
p("- skiff: the CLI asks the daemon to pull; the daemon fetches the manifest and config, downloads "
  "each missing blob (sha256-verified, fsynced), and unpacks each missing layer once into its content "
  "store (diff_id-verified), layers in parallel. Cold: `skiff images rm` + `skiff images prune` before "
  "each run (checked to leave no blob or layer). Warm: only `skiff images rm` (the record), so blobs and "
  "unpacked layers stay and the pull finds them in the store.")
p("- peer: `skopeo copy` into an OCI layout (verifies digests, fsyncs blobs, updates its blob-info cache), "
  "then GNU `tar -xf` of each layer blob in manifest order into a fresh rootfs (tar detects gzip; no "
  "diff_id check, no whiteout handling: this image has none). Cold: the OCI dir and rootfs are removed "
  "before each run. Warm: only the rootfs is removed; skopeo finds every blob and skips it, but tar "
  "still unpacks every layer, because an OCI layout keeps blobs, not unpacked layers. skiff keeps "
  "unpacked layers, so the warm rows compare different amounts of work on purpose: it is what a warm "
  "pull costs each tool.")
p("- Times are wall clock of the command. hyperfine's User/System CPU (in the JSON) cover only the `skiff` "
  "CLI, not the daemon doing the work, so they are not comparable with the peer's and are left out.")
p("- The peer's layer order is read from the OCI manifest once before timing, so it pays no JSON parsing.")
p(f"- Registry requests of one warm pull (from its access log): skiff: {E['REPORT_SKIFF_WARM_REQUESTS'] or 'none'}; "
  f"skopeo: {E['REPORT_PEER_WARM_REQUESTS'] or 'none'}.")
p(f"- Check before timing: one cold pull left {mib(E['REPORT_STORE_BYTES'])} in the skiff store "
  f"(blobs + unpacked layers); `rm` + `prune` printed \"{E['REPORT_PRUNE_MSG']}\" and left it empty.")
p()
p("<details><summary>Exact commands</summary>")
p()
p("```sh")
p("# $WORK is the script's temporary directory; hyperfine runs each line with sh -c")
p("# skiff (cold and warm)")
p(short(E["REPORT_CMD_SKIFF"]))
p("# prepare, cold")
p(short(E["REPORT_PREP_SKIFF_COLD"]))
p("# prepare, warm")
p(short(E["REPORT_PREP_SKIFF_WARM"]))
p("# peer (cold and warm)")
p(short(E["REPORT_CMD_PEER"]))
p("# prepare, cold")
p(short(E["REPORT_PREP_PEER_COLD"]))
p("# prepare, warm")
p(short(E["REPORT_PREP_PEER_WARM"]))
p("```")
p()
p("</details>")
EOF
cat "$OUT/pull.md"
log "results (hyperfine JSON, pull.md, logs) in $OUT"
