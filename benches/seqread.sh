#!/usr/bin/env bash
# One command for the one-sequential-reader benchmark (see seqread.py). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
benches/prepare.sh
exec python3 benches/seqread.py "$@"
