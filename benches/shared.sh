#!/usr/bin/env bash
# One command for the shared-tier benchmark (see shared.py). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
benches/prepare.sh
exec python3 benches/shared.py "$@"
