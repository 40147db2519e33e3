#!/usr/bin/env bash
# One command for the listing benchmark (see listing.py). Not part of CI: uploading 100,000
# objects to the local server takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -q
exec python3 benches/listing.py "$@"
