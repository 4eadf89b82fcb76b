#!/usr/bin/env bash
# Install Debian's chromium for the browser tests of `python -m evaluation.browse` (tests/evaluation/test_browse*.py)
# where it is missing. Idempotent: does nothing when a chromium is on PATH. Needs root or sudo and the Debian
# package registry; `.ci/run` and the tests' setup call it.
set -euo pipefail
for binary in chromium chromium-browser; do
  if command -v "$binary" >/dev/null 2>&1; then
    exit 0
  fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo -n"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
