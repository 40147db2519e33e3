#!/usr/bin/env bash
# One command for the cold small-file benchmark (see cold.py). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
benches/prepare.sh
exec python3 benches/cold.py "$@"
