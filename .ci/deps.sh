#!/bin/sh
# Install the Debian packages Caracal needs, non-interactively; do nothing
# when they are all present (so `make run` and `make check` can call it).
set -eu
PKGS="build-essential pkg-config liblua5.4-dev lua5.4 libpq-dev uuid-dev lua-cjson lua-busted
      libssl-dev libreadline-dev postgresql postgresql-contrib tmux procps util-linux
      python3 python3-cryptography"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "deps: need root (or sudo) to install:$missing" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
