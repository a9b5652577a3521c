#!/bin/sh
# The Debian package the scale suite needs beyond `make deps`: pgbouncer
# (the real PgBouncer the pooler spec starts). Installed when missing, as
# root or through sudo; without either the PgBouncer cases are skipped,
# each saying why.
set -u
dpkg-query -W -f='${Status}' pgbouncer 2>/dev/null | grep -q 'install ok installed' && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
  else echo "scale: not root; not installing pgbouncer (its cases will be skipped)" >&2; exit 0; fi
fi
echo "scale: installing pgbouncer"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null 2>&1 || {
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  $SUDO apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null || {
    echo "scale: could not install pgbouncer (its cases will be skipped)" >&2
    exit 0
  }
}
