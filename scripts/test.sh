#!/usr/bin/env bash
# The test command: installs what the tests need, builds the wheel into a fresh virtualenv, then
# runs every test (unit, format vectors, and end-to-end through real FUSE mounts against local
# S3 servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# Never let the AWS SDK look for EC2 instance metadata: tests talk to 127.0.0.1 only.
export AWS_EC2_METADATA_DISABLED=true
# tests/python_e2e.rs drives the installed wheel's Python API.
scripts/wheel.sh
export HOARDFS_WHEEL_PYTHON="$PWD/target/py-venv/bin/python"
exec cargo nextest run --no-fail-fast "$@"
