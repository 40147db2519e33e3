#!/usr/bin/env bash
# One command for the scale benchmark (see scale.py). Not part of CI: it takes many minutes.
# Builds benches/s3-server (s3s-fs 0.14.1's directory backend, the newest that builds with this
# toolchain, behind a TCP_NODELAY listener): the S3 server whose directory the objects go into.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check boto3
cargo build --release -q --manifest-path benches/s3-server/Cargo.toml
cargo build --release -q
exec python3 benches/scale.py "$@"
