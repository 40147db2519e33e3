#!/usr/bin/env bash
# One command for the per-GET client cost benchmark (see client.py). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
benches/prepare.sh
cargo build --release -q --example client_gets
exec python3 benches/client.py "$@"
