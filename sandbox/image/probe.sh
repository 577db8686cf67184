#!/usr/bin/env bash
# Proves the sandbox image runs under gVisor and measures the two latencies the supervisor cares
# about: `docker run` cold start and `docker exec … true` round trip, both under runsc.
#
#   bash sandbox/image/probe.sh [image] [runs]      (defaults: portcullis-sandbox:<package.json version>, 30)
#
# Uses an --internal Docker network `portcullis-probe-<pid>` and removes it (and its containers) on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$HERE/../.." && pwd)
IMAGE=${1:-portcullis-sandbox:$(node -p 'require(process.argv[1]).version' "$ROOT_DIR/package.json")}
RUNS=${2:-30}
NET=portcullis-probe-$$
LONG=portcullis-probe-exec-$$

say() { printf '[probe] %s\n' "$*"; }
die() { printf '[probe] FAIL: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }
# stdin: one number per line -> "p50 X ms, p99 Y ms, min A, max B (n=N)" (nearest-rank percentiles)
stats() {
  sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "no samples"; exit }
    p50 = v[int(0.50 * NR + 0.999999)]; p99 = v[int(0.99 * NR + 0.999999)]
    printf "p50 %d ms, p99 %d ms, min %d, max %d (n=%d)", p50, p99, v[1], v[NR], NR }'
}
cleanup() {
  docker rm -f "$LONG" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
}
trap cleanup EXIT

docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE not found (bash sandbox/image/build.sh)"
docker network create --internal "$NET" >/dev/null
subnet=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$NET")
say "network $NET (internal, $subnet)"

run() { docker run --rm --runtime=runsc --network "$NET" "$IMAGE" "$@"; }

out=$(run curl --version | head -n 1) || die "curl --version under runsc"
say "curl under runsc: $out"
out=$(run python3 -c 'print(1)') || die "python3 under runsc"
[[ $out == 1 ]] || die "python3 printed '$out', expected 1"
say "python3 under runsc: printed $out"
kver=$(run cat /proc/version)
say "/proc/version in the sandbox: $kver"
dmesg_head=$(run dmesg 2>&1 | head -n 2 | tr '\n' ' ' || true)
say "dmesg in the sandbox: $dmesg_head"
[[ $dmesg_head == *gVisor* || $kver != *"$(uname -v)"* ]] || die "neither dmesg nor /proc/version shows gVisor"
[[ $dmesg_head == *gVisor* ]] && say "gVisor confirmed (its dmesg banner)"
out=$(run id -u)
[[ $out == 10001 ]] || die "default user is uid $out, expected 10001"
# Internal network: no route out. A direct dial to a public address must fail.
if run curl -sS -m 3 -o /dev/null http://192.0.2.1/ 2>/dev/null; then die "a direct dial from the internal network succeeded"; fi
say "direct dial from the internal network fails, as it should"

docker run -d --name "$LONG" --runtime=runsc --network "$NET" "$IMAGE" >/dev/null
rt=$(docker inspect -f '{{.HostConfig.Runtime}}' "$LONG")
[[ $rt == runsc ]] || die "docker inspect says runtime '$rt'"
say "docker inspect: HostConfig.Runtime=$rt, User=$(docker inspect -f '{{.Config.User}}' "$LONG")"

say "measuring docker run --rm --runtime=runsc … true ($RUNS runs)"
cold=$(for _ in $(seq 1 "$RUNS"); do
  a=$(now_ms); run true; b=$(now_ms); echo $((b - a))
done | stats)
say "cold start (docker run --rm, runsc): $cold"

say "measuring docker exec … true ($RUNS runs)"
docker exec "$LONG" true # warm-up
execs=$(for _ in $(seq 1 "$RUNS"); do
  a=$(now_ms); docker exec "$LONG" true; b=$(now_ms); echo $((b - a))
done | stats)
say "exec round trip (docker exec, runsc): $execs"

runc_cold=$(for _ in $(seq 1 10); do
  a=$(now_ms); docker run --rm --runtime=runc --network "$NET" "$IMAGE" true; b=$(now_ms); echo $((b - a))
done | stats)
say "for comparison, cold start under runc: $runc_cold"
say "ok"
