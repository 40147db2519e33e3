#!/usr/bin/env bash
# One command for the scale benchmark (see scale.py). Not part of CI: it takes many minutes.
# Installs s3s-fs 0.14.1 (the newest that builds with this toolchain) once, under
# /var/tmp/hoardfs-tools, as the S3 server whose backing directory the objects are written into.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check boto3
tools=/var/tmp/hoardfs-tools
[ -x "$tools/bin/s3s-fs" ] || cargo install -q s3s-fs --version 0.14.1 --features binary --locked --root "$tools"
cargo build --release -q
exec python3 benches/scale.py "$@"
