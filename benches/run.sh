#!/usr/bin/env bash
# One command for the epoch benchmark (see epochs.py). Not part of CI: it takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
benches/prepare.sh
exec python3 benches/epochs.py "$@"
