#!/usr/bin/env bash
# Network benchmark, from one run with its own `skiff server`:
#   1. service to service: a request from inside an instance to another Service by name
#      (the resolver's Service address, skiff's listener in the instance's namespace, the
#      router) beside the same request from the host through the ingress;
#   2. egress: a request from inside an instance to an HTTP server on the host (skiff's
#      egress path: the namespace's redirect, the daemon's listener, a connection dialled
#      from the host) beside the same request made from the host.
#
#   bench/network.sh [--seconds S] [--reps N] [--connections N] [--out FILE]
#
# Each case runs wrk twice per repetition: 1 connection (latency: p50, p99) and N
# connections (throughput), the cases interleaved, medians over the repetitions. wrk runs in
# the instance's network namespace (`nsenter --net`) for the in-instance cases and on the
# host for the others. The backend is busybox httpd from skiff's sample image for the Service
# cases and nginx on the host's loopback for the egress cases. Prints Markdown on stdout;
# progress goes to stderr.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/network.sh [options]

  --seconds S       seconds per wrk run (default 5)
  --reps N          repetitions of every case (default 3)
  --connections N   connections of the throughput runs (default 16)
  --out FILE        also write the Markdown to FILE

Needs root, runc, wrk, nginx, busybox-static, curl, jq and cargo:
  apt-get install -y runc wrk nginx-light busybox-static curl jq
EOF
}

SECONDS_PER_RUN=5
REPS=3
CONNS=16
OUT=""
INVOCATION="bench/network.sh"
for a in "$@"; do INVOCATION+=" $(printf '%q' "$a")"; done
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --seconds) SECONDS_PER_RUN=${2:?}; shift 2 ;;
        --reps) REPS=${2:?}; shift 2 ;;
        --connections) CONNS=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        *) echo "network.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[network.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (the daemon runs containers)"
for c in runc wrk nginx curl jq nsenter cargo; do
    command -v "$c" >/dev/null || die "$c is missing (see --help)"
done
[[ -x /usr/bin/busybox ]] || die "/usr/bin/busybox is missing (apt-get install -y busybox-static)"

log "building skiff and skiff-sample-image (release)"
cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin skiff >&2
cargo build --release --manifest-path "$ROOT/Cargo.toml" -p skiff-test-utils --bin skiff-sample-image >&2
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CODE=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/skiff-bench-network.XXXXXX")
DATA="$WORK/data"
DAEMON_PID=""
NGINX_PID=""
finish() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $DAEMON_PID ]]; then
        SKIFF_DATA_DIR=$DATA "$WORK/skiff" delete service nb-backend nb-frontend >/dev/null 2>&1 || true
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    if [[ -n $NGINX_PID ]]; then
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        wait "$NGINX_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    ((rc == 0)) || log "failed (exit $rc)"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

cp "$TARGET/release/skiff" "$WORK/skiff"
export SKIFF_DATA_DIR=$DATA
mkdir -p "$DATA"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port)
INGRESS_PORT=$(free_port)
NGINX_PORT=$(free_port)

log "starting skiff (API :$API_PORT, ingress :$INGRESS_PORT)"
"$WORK/skiff" server --data-dir "$DATA" --api-listen "127.0.0.1:$API_PORT" \
    --ingress-listen "127.0.0.1:$INGRESS_PORT" --log-format json \
    --termination-grace-period-seconds 1 >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 200); do [[ -f $DATA/endpoints.json ]] && break; sleep 0.05; done
[[ -f $DATA/endpoints.json ]] || die "the daemon did not start: $(tail -5 "$WORK/daemon.log")"

log "importing the sample image and applying two Services"
"$TARGET/release/skiff-sample-image" "$WORK/layout" --tag v1 >/dev/null
"$WORK/skiff" images import "$WORK/layout" --tag skiff.local/network-bench/httpd:v1 >/dev/null
cat >"$WORK/services.yaml" <<EOF
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: nb-backend}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/min-scale: "1", autoscaling.knative.dev/max-scale: "1"}
    spec:
      containers:
        - image: skiff.local/network-bench/httpd:v1
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: nb-frontend}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
        autoscaling.knative.dev/max-scale: "1"
        skiff.dev/egress: host.skiff.internal
    spec:
      containers:
        - image: skiff.local/network-bench/httpd:v1
EOF
"$WORK/skiff" apply -f "$WORK/services.yaml" >/dev/null

TOKEN=$(cat "$DATA/token")
api() { curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$API_PORT/api/v1/namespaces/default/$1"; }
ready_instance() {
    api "services/$1/instances" | jq -r '[.[] | select(.status.ready == true)][0].id // empty'
}
FRONTEND=""
for _ in $(seq 600); do
    FRONTEND=$(ready_instance nb-frontend || true)
    BACKEND=$(ready_instance nb-backend || true)
    [[ -n $FRONTEND && -n $BACKEND ]] && break
    sleep 0.1
done
[[ -n $FRONTEND && -n $BACKEND ]] || die "the Services did not become ready"
NETNS="$DATA/run/instances/$FRONTEND/netns"

mkdir -p "$WORK/www"
printf 'hello from the host\n' >"$WORK/www/index.html"
chmod a+rx "$WORK" "$WORK/www"   # nginx's workers run as www-data
cat >"$WORK/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
    }
}
EOF
nginx -c "$WORK/nginx.conf" &
NGINX_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$NGINX_PORT/" >/dev/null && break; sleep 0.05; done

# Service address and host address inside an instance, as skiff's resolver answers them.
SERVICE_ADDR=$(nsenter --net="$NETNS" busybox nslookup nb-backend 127.0.0.11 2>/dev/null |
    awk '/^Address/ && !/127\.0\.0\.11/ {print $NF}' | tail -1)
HOST_ADDR=$(nsenter --net="$NETNS" busybox nslookup host.skiff.internal 127.0.0.11 2>/dev/null |
    awk '/^Address/ && !/127\.0\.0\.11/ {print $NF}' | tail -1)
[[ -n $SERVICE_ADDR && -n $HOST_ADDR ]] || die "the instance's resolver did not answer (service: '$SERVICE_ADDR', host: '$HOST_ADDR')"
log "inside the instance: nb-backend → $SERVICE_ADDR, host.skiff.internal → $HOST_ADDR"

# Checks, once: each path answers what it should.
in_ns() { nsenter --net="$NETNS" "$@"; }
in_ns curl -fsS -H 'Host: nb-backend' "http://$SERVICE_ADDR/" | grep -q . || die "service to service failed"
curl -fsS -H 'Host: nb-backend.default.localhost' "http://127.0.0.1:$INGRESS_PORT/" | grep -q . || die "the ingress failed"
in_ns curl -fsS "http://$HOST_ADDR:$NGINX_PORT/" | grep -q 'hello from the host' || die "egress failed"

# wrk's summary of one run as "p50_us p99_us rps non2xx_or_errors".
run_wrk() {
    local conns=$1 threads=1
    shift
    ((conns > 1)) && threads=2
    local out
    out=$("$@" -t"$threads" -c"$conns" -d"${SECONDS_PER_RUN}s" --latency 2>&1)
    printf '%s\n' "$out" >>"$WORK/wrk.log"
    awk -v out="$out" 'BEGIN {
        n = split(out, l, "\n"); p50 = p99 = rps = ""; bad = 0
        for (i = 1; i <= n; i++) {
            if (l[i] ~ /^ +50%/) p50 = l[i]; if (l[i] ~ /^ +99%/) p99 = l[i]
            if (l[i] ~ /^Requests\/sec/) { split(l[i], f, " "); rps = f[2] }
            if (l[i] ~ /Non-2xx/ || l[i] ~ /Socket errors/) bad = 1
        }
        print us(p50), us(p99), rps, bad
    }
    function us(line,   f, v) {
        split(line, f, " "); v = f[2]
        if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000
        return v
    }'
}

# The four cases: wrk with the rest of its arguments.
case_cmd() {
    case "$1" in
        s2s) printf '%s\0' nsenter --net="$NETNS" wrk -H 'Host: nb-backend' "http://$SERVICE_ADDR/" ;;
        ingress) printf '%s\0' wrk -H 'Host: nb-backend.default.localhost' "http://127.0.0.1:$INGRESS_PORT/" ;;
        egress) printf '%s\0' nsenter --net="$NETNS" wrk "http://$HOST_ADDR:$NGINX_PORT/" ;;
        host) printf '%s\0' wrk "http://127.0.0.1:$NGINX_PORT/" ;;
    esac
}
CASES=(s2s ingress egress host)

declare -A P50 P99 RPS1 RPSN BAD
for rep in $(seq "$REPS"); do
    for c in "${CASES[@]}"; do
        mapfile -d '' -t cmd < <(case_cmd "$c")
        read -r p50 p99 rps1 bad1 < <(run_wrk 1 "${cmd[@]}")
        read -r _ _ rpsn badn < <(run_wrk "$CONNS" "${cmd[@]}")
        P50[$c]+="$p50 "; P99[$c]+="$p99 "; RPS1[$c]+="$rps1 "; RPSN[$c]+="$rpsn "
        BAD[$c]=$(( ${BAD[$c]:-0} + bad1 + badn ))
        log "rep $rep/$REPS $c: p50 ${p50} µs, p99 ${p99} µs, ${rps1} req/s at 1, ${rpsn} req/s at $CONNS"
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
row() {
    local c=$1 label=$2
    printf '| %s | %s | %s | %s | %s | %s |\n' "$label" \
        "$(median <<<"${P50[$c]}")" "$(median <<<"${P99[$c]}")" \
        "$(median <<<"${RPS1[$c]}" | awk '{printf "%.0f", $1}')" \
        "$(median <<<"${RPSN[$c]}" | awk '{printf "%.0f", $1}')" "${BAD[$c]}"
}

{
    printf '## Network: service to service and egress (%s)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf '```\n%s     # at %s\n```\n\n' "$INVOCATION" "$CODE"
    printf -- '- Machine: %s, %s × %s; load average %s\n' "$(uname -sr)" \
        "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" "$(nproc)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- wrk %s s per run, 1 connection and thread (latency) and %s connections on 2 threads (throughput), %s repetitions, cases interleaved; medians. Service cases: busybox httpd (sample image, `min-scale` = `max-scale` = 1) behind skiff. Egress cases: nginx on the host'"'"'s loopback, one worker, a 20-byte file.\n\n' \
        "$SECONDS_PER_RUN" "$CONNS" "$REPS"
    printf '| Case | p50 (µs) | p99 (µs) | req/s, 1 connection | req/s, %s connections | runs with errors or non-2xx |\n|---|---|---|---|---|---|\n' "$CONNS"
    row s2s "service to service: inside nb-frontend → \`http://nb-backend/\` (skiff's listener in the namespace → router)"
    row ingress "the same request from the host through the ingress"
    row egress "egress: inside nb-frontend → \`http://host.skiff.internal:PORT/\` (redirect → daemon → host)"
    row host "the same request made from the host"
} | tee ${OUT:+"$OUT"}
