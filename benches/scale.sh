#!/usr/bin/env bash
# One command for the scale benchmark (see scale.py). Not part of CI: it takes many minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
benches/prepare.sh
exec python3 benches/scale.py "$@"
