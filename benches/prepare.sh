#!/usr/bin/env bash
# What the S3-server benchmarks (scale.sh, shared.sh) need: test deps, boto3, and release builds of
# hoardfs and of benches/s3-server (s3s-fs 0.14.1's directory backend, the newest that builds with
# this toolchain, behind a TCP_NODELAY listener: the S3 server whose directory the objects go into).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check boto3
cargo build --release -q --manifest-path benches/s3-server/Cargo.toml
cargo build --release -q
