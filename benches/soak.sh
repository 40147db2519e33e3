#!/usr/bin/env bash
# Soak benchmark (not in CI): long random reads with constant eviction; see soak.py.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -q
exec python3 benches/soak.py "$@"
