#!/usr/bin/env bash
# One command for the time-to-first-byte benchmark (see ttfb.py). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
benches/prepare.sh
exec python3 benches/ttfb.py "$@"
