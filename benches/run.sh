#!/usr/bin/env bash
# One command for the epoch benchmark (see epochs.py). Not part of CI: it takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -q
exec python3 benches/epochs.py "$@"
