#!/usr/bin/env bash
# Builds the sandbox image portcullis-sandbox:<version> locally, with no container registry:
# debootstrap (minbase, bookworm, from the Debian mirror apt already uses) + packages.txt, security
# updates applied, a non-root user `sandbox` (uid/gid 10001), then `docker import`.
#
# Cached: the image carries the label org.portcullis.inputs = sha256 of (this script, packages.txt);
# when an image with the same tag and label exists, nothing is built.
#
#   bash sandbox/image/build.sh            build if needed; progress on stderr, the image reference on stdout
#   PORTCULLIS_SANDBOX_REBUILD=1 ...       build even when the cached image matches
#   PORTCULLIS_SANDBOX_TAG=x ...           tag to use instead of the package.json version
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$HERE/../.." && pwd)
SUITE=bookworm
SANDBOX_UID=10001
LABEL_KEY=org.portcullis.inputs
T0=$(date +%s.%N)

say() { printf '[sandbox-image] %s\n' "$*" >&2; }
die() { printf '[sandbox-image] ERROR: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot)"
command -v docker >/dev/null || die "docker client not found"
docker info --format '{{.ServerVersion}}' >/dev/null 2>&1 || die "Docker Engine not reachable (run scripts/prereqs.sh)"

VERSION=${PORTCULLIS_SANDBOX_TAG:-$(node -p 'require(process.argv[1]).version' "$ROOT_DIR/package.json" 2>/dev/null || true)}
[[ -n $VERSION ]] || die "cannot read the version from $ROOT_DIR/package.json"
IMAGE="portcullis-sandbox:$VERSION"

mapfile -t PACKAGES < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$HERE/packages.txt" | grep -v '^$')
((${#PACKAGES[@]})) || die "no packages in $HERE/packages.txt"
INPUTS_HASH=$(cat "$HERE/build.sh" "$HERE/packages.txt" | sha256sum | cut -c1-64)

existing=$(docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$IMAGE" 2>/dev/null || true)
old_id=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if [[ $existing == "$INPUTS_HASH" && ${PORTCULLIS_SANDBOX_REBUILD:-0} != 1 ]]; then
  say "$IMAGE is up to date (inputs ${INPUTS_HASH:0:12}); nothing to build ($(elapsed "$T0"))"
  echo "$IMAGE"
  exit 0
fi
[[ -n $existing ]] && say "$IMAGE exists with inputs ${existing:0:12}; rebuilding for ${INPUTS_HASH:0:12}"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap, or scripts/prereqs.sh)"

# --- Debian mirrors, exactly as apt has them (deb822 *.sources and one-line *.list) -------------
# Prints "URI SUITE" for every enabled `deb` source of this machine.
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk '$1 == "deb" {
           i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
           if (i + 1 <= NF) print $i, $(i + 1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk 'function flush() {
           if (types ~ /(^| )deb( |$)/ && enabled != "no") {
             n = split(uris, u, " "); m = split(suites, s, " ")
             for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print u[a], s[b]
           }
           types = uris = suites = ""; enabled = "yes"
         }
         BEGIN { enabled = "yes" }
         /^[[:space:]]*$/ { flush(); next }
         /^#/ { next }
         { k = tolower($1); sub(/:$/, "", k); $1 = ""; sub(/^ +/, "")
           if (k == "types") types = $0; else if (k == "uris") uris = $0
           else if (k == "suites") suites = $0; else if (k == "enabled") enabled = tolower($0) }
         END { flush() }' "$f"
  done
}
SOURCES=$(apt_sources | sort -u)
MIRROR=$(awk -v s="$SUITE" '$2 == s { print $1; exit }' <<<"$SOURCES")
[[ -n $MIRROR ]] || die "no '$SUITE' Debian source in /etc/apt/sources.list{,.d}; cannot pick a mirror"
# Sources for the image's own apt (updates + security), from the same hosts the machine uses.
IMAGE_SOURCES=$(awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security" { print "deb " $1 " " $2 " main" }' <<<"$SOURCES")

WORK=$(mktemp -d /var/tmp/portcullis-sandbox.XXXXXX)
ROOTFS="$WORK/rootfs"
cleanup() {
  # debootstrap unmounts what it mounts; make sure nothing is left mounted before deleting.
  local m
  for m in $(awk -v r="$ROOTFS" '$2 ~ "^"r { print $2 }' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# --- 1. debootstrap ---------------------------------------------------------------------------
t=$(date +%s.%N)
include=$(IFS=,; echo "${PACKAGES[*]}")
say "debootstrap --variant=minbase $SUITE from $MIRROR (+ $include)"
if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
  tail -n 30 "$WORK/debootstrap.log" >&2
  [[ -f $ROOTFS/debootstrap/debootstrap.log ]] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
  die "debootstrap failed (log above)"
fi
say "debootstrap done in $(elapsed "$t")"

# --- 2. updates from bookworm-updates / bookworm-security ---------------------------------------
t=$(date +%s.%N)
printf '%s\n' "$IMAGE_SOURCES" >"$ROOTFS/etc/apt/sources.list"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }
if ! { in_root apt-get update -qq && in_root apt-get -y -qq -o Dpkg::Options::=--force-confold upgrade; } >"$WORK/upgrade.log" 2>&1; then
  tail -n 30 "$WORK/upgrade.log" >&2
  die "apt-get upgrade in the image rootfs failed (log above)"
fi
upgraded=$(grep -c '^Unpacking ' "$WORK/upgrade.log" || true)
say "updates: $upgraded package(s) upgraded from $(awk '{ print $3 }' <<<"$IMAGE_SOURCES" | paste -sd, -) in $(elapsed "$t")"

# --- 3. user, workspace, cleanup ----------------------------------------------------------------
in_root groupadd --gid "$SANDBOX_UID" sandbox
in_root useradd --uid "$SANDBOX_UID" --gid "$SANDBOX_UID" --create-home --home-dir /home/sandbox --shell /bin/bash sandbox
install -d -m 0755 -o "$SANDBOX_UID" -g "$SANDBOX_UID" "$ROOTFS/workspace"
in_root apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/var/log/apt/* "$ROOTFS"/var/log/dpkg.log "$ROOTFS"/var/log/alternatives.log \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
  "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* "$ROOTFS"/root/.bash_history
# Docker provides these at run time.
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/hostname"
for b in wget busybox; do
  [[ ! -e $ROOTFS/usr/bin/$b ]] || die "$b ended up in the image; it should not be there"
done
size=$(du -sh --apparent-size "$ROOTFS" | cut -f1)

# --- 4. import --------------------------------------------------------------------------------
t=$(date +%s.%N)
say "docker import $IMAGE (rootfs $size)"
tar -C "$ROOTFS" --numeric-owner -cf - . | docker import \
  --change "USER $SANDBOX_UID:$SANDBOX_UID" \
  --change 'WORKDIR /workspace' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV HOME=/home/sandbox' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["sleep","infinity"]' \
  --change "LABEL $LABEL_KEY=$INPUTS_HASH" \
  --change "LABEL org.portcullis.suite=$SUITE" \
  --message "portcullis sandbox image, inputs $INPUTS_HASH" \
  - "$IMAGE" >/dev/null
got=$(docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$IMAGE" 2>/dev/null || true)
[[ $got == "$INPUTS_HASH" ]] || die "imported $IMAGE but its $LABEL_KEY label is '$got', expected $INPUTS_HASH"
# The previous build under this tag is now untagged: remove it unless a container still uses it.
new_id=$(docker image inspect --format '{{.Id}}' "$IMAGE")
[[ -z $old_id || $old_id == "$new_id" ]] || docker image rm "$old_id" >/dev/null 2>&1 || true
say "imported in $(elapsed "$t"); $IMAGE built in $(elapsed "$T0") total"
echo "$IMAGE"
