#!/bin/sh
# Debian packages the reliability suite uses, installed when missing:
# nftables and iproute2 (blackholes in a network namespace), util-linux
# (unshare, mount), and clang (libFuzzer) when called as `deps.sh clang`.
# Without root (and no sudo) nothing is installed: the cases that need a
# missing tool are skipped, each with the reason.
set -u
PKGS="nftables iproute2 util-linux"
[ "${1:-}" = clang ] && PKGS="clang"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
  else echo "reliability: not root; not installing$missing (those cases will be skipped)" >&2; exit 0; fi
fi
echo "reliability: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null || {
  echo "reliability: could not install$missing (those cases will be skipped)" >&2
  exit 0
}
