#!/bin/sh
# `make run`: the main job on a fresh machine. The build is done by make;
# here: a local database when none is configured, the migrations, and the
# quick-start example.
set -eu
cd "$(dirname "$0")/.."
BIN=${CARACAL_BIN:-build/caracal}
if [ -z "${CARACAL_DATABASE_URL:-}" ] && [ -z "${CARACAL_CONFIG:-}" ] && [ ! -f caracal.config.lua ]; then
  "$BIN" local start
fi
"$BIN" db upgrade head
"$BIN" examples/quickstart.lua
