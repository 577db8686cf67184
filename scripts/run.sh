#!/usr/bin/env bash
# The two entry points of the README, on a fresh Debian 12 machine, as root:
#   npm run up        -> scripts/run.sh up [args]    prerequisites, build, `portcullis up` (default policy)
#   npm run test:all  -> scripts/run.sh test [args]  prerequisites, sandbox image, `npm test`
# Both install what is missing first (scripts/prereqs.sh is idempotent: a second run changes nothing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:-}
shift || true
bash scripts/prereqs.sh
# shellcheck disable=SC1091
[[ -f .portcullis/env ]] && . .portcullis/env
case "$what" in
  up)
    echo "[run] building Portcullis" >&2
    npm run --silent build >/dev/null
    # the sandbox image, built locally from Debian packages (cached: a no-op once built)
    PORTCULLIS_SANDBOX_IMAGE=$(bash sandbox/image/build.sh)
    export PORTCULLIS_SANDBOX_IMAGE
    exec node dist/cli/portcullis.js up "$@"
    ;;
  test)
    PORTCULLIS_SANDBOX_IMAGE=$(bash sandbox/image/build.sh)
    export PORTCULLIS_SANDBOX_IMAGE
    exec npm test -- "$@"
    ;;
  *)
    echo "usage: scripts/run.sh up|test [args]" >&2
    exit 2
    ;;
esac
