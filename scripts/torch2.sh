#!/usr/bin/env bash
# The LibTorch-2 environment: a Debian sid root made with debootstrap, holding sid's
# libtorch-dev / python3-torch (2.x) and the same Debian packages as scripts/setup.sh
# (scripts/packages.sh), with this checkout bind-mounted at the same path.
#
# Usage:
#   scripts/torch2.sh setup           make the root, or reuse it (idempotent)
#   scripts/torch2.sh test            the README's set-up and test commands inside the root,
#                                     building into build-torch2/, then the pip smoke test
#   scripts/torch2.sh pip-smoke       pip install --no-build-isolation . into a venv inside
#                                     the root, import it and train a few steps
#   scripts/torch2.sh run CMD...      run CMD inside the root (cwd kept when inside the checkout)
#   scripts/torch2.sh info            the root's path, state and torch version
#
# Environment:
#   SPECOPT_TORCH2_ROOT    where the root lives; outside the checkout so that every clone on
#                          this machine reuses it (default /var/cache/specopt/torch2-root)
#   SPECOPT_TORCH2_MIRROR  Debian mirror (default: the first Debian URI of this machine's apt
#                          sources, else http://deb.debian.org/debian)
#   SPECOPT_TORCH2_BUILD   build dir inside the checkout (default build-torch2)
#
# Safety: every mount (/proc, /dev, /sys, the checkout and ../shared beside it) is made inside a private mount
# namespace (unshare -m) that dies with the command, so nothing stays mounted after an exit,
# an error or a kill, and the root can be deleted at any time. debootstrap writes into
# ROOT.partial, which is renamed to ROOT only when it finished, so a half-made root from an
# interrupted run is never used: it is removed and made again. The package set is recorded
# in ROOT/.specopt-packages and re-applied when scripts/packages.sh changes. A lock file
# (ROOT.lock) serialises concurrent set-ups. Needs root (debootstrap, chroot, mount).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd -P)
ROOT=${SPECOPT_TORCH2_ROOT:-/var/cache/specopt/torch2-root}
BUILD=${SPECOPT_TORCH2_BUILD:-build-torch2}
SUITE=sid
# The ccache directory lives in the root, so it persists (and is deleted) with it.
CCACHE_IN_ROOT=/var/cache/specopt-ccache

die() { echo "torch2.sh: $*" >&2; exit 1; }
log() { echo "torch2.sh: $*" >&2; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot and mount); run it with sudo"
case "$ROOT" in
  /|"") die "SPECOPT_TORCH2_ROOT must name a directory of its own, got '$ROOT'" ;;
  "$REPO"|"$REPO"/*) die "SPECOPT_TORCH2_ROOT ($ROOT) must lie outside the checkout ($REPO)" ;;
esac

mirror() {
  if [[ -n ${SPECOPT_TORCH2_MIRROR:-} ]]; then echo "$SPECOPT_TORCH2_MIRROR"; return; fi
  local uri
  # deb822 sources (URIs: ...) and one-line sources (deb URI suite ...); skip -security.
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
          awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' | grep -v -- '-security' | grep '/debian/\?$' | head -1 || true)
  [[ -n $uri ]] || uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
          awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^(http|https|file):/) {print $i; break}}' |
          grep -v -- '-security' | grep '/debian/\?$' | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

packages() { (source "$REPO/scripts/packages.sh"; printf '%s\n' "${SPECOPT_PACKAGES[@]}"); }

# Run "$@" chrooted into $ROOT, in a private mount namespace (mounts vanish with it).
# The working directory is kept when it lies inside the checkout, else the checkout's root.
enter() {
  local cwd
  cwd=$(pwd -P)
  [[ $cwd == "$REPO" || $cwd == "$REPO"/* ]] || cwd=$REPO
  local -a envs=(HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}"
                 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
                 DEBIAN_FRONTEND=noninteractive CCACHE_DIR="$CCACHE_IN_ROOT" SPECOPT_TORCH2_INSIDE=1)
  local v
  # Pass through the project's own knobs and what CI and the test runners read.
  while IFS= read -r v; do envs+=("$v=${!v}"); done < <(compgen -e | grep -E '^(SPECOPT_|OMP_NUM_THREADS$|CI$|OUT$|CTEST_|GTEST_)' | grep -v '^SPECOPT_TORCH2_INSIDE$' || true)
  unshare -m --propagation private -- /bin/bash -euc '
    root=$1 repo=$2 cwd=$3; shift 3
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys"
    mkdir -p "$root$repo"
    mount --bind "$repo" "$root$repo"
    # The reference files beside the checkout (../shared, read-only), where they exist.
    shared=$(realpath -m "$repo/../shared")
    if [[ -d $shared ]]; then
      mkdir -p "$root$shared"; mount --bind "$shared" "$root$shared"; mount -o remount,bind,ro "$root$shared"
    fi
    # $OUT (gpu-check.sh) at the same path when it lies outside the checkout.
    if [[ -n ${OUT:-} && -d $OUT && $OUT != "$repo"/* ]]; then mkdir -p "$root$OUT"; mount --bind "$OUT" "$root$OUT"; fi
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    exec chroot "$root" /usr/bin/env -i "$@"
  ' enter "$ROOT" "$REPO" "$cwd" "${envs[@]}" /bin/bash -c 'cd "$0" && exec "$@"' "$cwd" "$@"
}

make_root() {
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
  }
  if [[ -e $ROOT && ! -f $ROOT/.specopt-root-ok ]]; then
    log "$ROOT is half-made (no .specopt-root-ok): removing it"
    rm -rf --one-file-system "$ROOT"
  fi
  if [[ ! -e $ROOT ]]; then
    local m t0=$SECONDS
    m=$(mirror)
    rm -rf --one-file-system "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    log "debootstrap $SUITE from $m into $ROOT (once; reused afterwards)"
    # In its own mount namespace: debootstrap mounts /proc and /sys in the target, and an
    # interrupted run must not leave them mounted.
    unshare -m --propagation private -- debootstrap --variant=minbase "$SUITE" "$ROOT.partial" "$m" \
      > "$ROOT.debootstrap.log" 2>&1 || die "debootstrap failed; see $ROOT.debootstrap.log"
    touch "$ROOT.partial/.specopt-root-ok"
    mv "$ROOT.partial" "$ROOT"
    log "debootstrap done in $((SECONDS - t0)) s"
  fi
  # The sid index of a snapshot mirror carries a Valid-Until in the past.
  echo 'Acquire::Check-Valid-Until "false";' > "$ROOT/etc/apt/apt.conf.d/99specopt-snapshot"
  # No daemons start inside the root.
  printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"
  local want
  want=$(packages | sort -u)
  if [[ ! -f $ROOT/.specopt-packages || $(cat "$ROOT/.specopt-packages") != "$want" ]]; then
    local t0=$SECONDS
    log "installing the packages of scripts/packages.sh into the root"
    # shellcheck disable=SC2046
    enter /bin/sh -ec 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null && apt-get clean' \
      apt $(packages)
    echo "$want" > "$ROOT/.specopt-packages"
    log "packages installed in $((SECONDS - t0)) s"
  fi
}

setup() {
  mkdir -p "$(dirname "$ROOT")"
  exec 9>"$ROOT.lock"
  flock 9
  make_root
  flock -u 9
}

torch_version() { enter /usr/bin/python3 -c 'import torch; print(torch.__version__)'; }

pip_smoke() {
  # A venv that sees the root's system torch (no PyPI here: --no-build-isolation); the build
  # dir sits next to build-torch2/ (same depth) so ccache serves the library objects.
  enter /bin/bash -ec '
    venv=$PWD/$1/.venv-pip
    rm -rf "$venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    # --no-deps: sid'"'"'s own metadata does not resolve (its sympy 1.14 asks for mpmath < 1.4,
    # python3-mpmath is 1.4.1), so pip'"'"'s resolver would go to PyPI; pip_smoke.py checks
    # that the recorded torch pin is the installed torch instead.
    SPECOPT_BUILD_DIR=$PWD/$1-pip "$venv/bin/pip" install -q --no-build-isolation --no-deps .
    "$venv/bin/pip" show specopt | grep -E "^(Name|Version|Requires):"
    cd /tmp && "$venv/bin/python" "$0"
  ' "$REPO/scripts/pip_smoke.py" "$BUILD"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  setup) setup; log "root ready: $ROOT (torch $(torch_version))" ;;
  info)
    echo "root: $ROOT"
    if [[ -f $ROOT/.specopt-root-ok ]]; then
      echo "state: made; packages $([[ -f $ROOT/.specopt-packages ]] && echo installed || echo missing)"
      [[ -f $ROOT/.specopt-packages ]] && echo "torch: $(torch_version)"
    else
      echo "state: not made"
    fi ;;
  run)
    [[ $# -gt 0 ]] || die "usage: scripts/torch2.sh run CMD..."
    setup; enter "$@" ;;
  test)
    setup
    log "torch $(torch_version): scripts/setup.sh $BUILD && scripts/test.sh $BUILD"
    (cd "$REPO" && enter /bin/bash -ec 'scripts/setup.sh "$0" && scripts/test.sh "$0"' "$BUILD")
    (cd "$REPO" && pip_smoke) ;;
  pip-smoke) setup; (cd "$REPO" && pip_smoke) ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
