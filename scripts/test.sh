#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test (unit, format vectors,
# and end-to-end through real FUSE mounts against a local S3 server on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# Never let the AWS SDK look for EC2 instance metadata: tests talk to 127.0.0.1 only.
export AWS_EC2_METADATA_DISABLED=true
exec cargo nextest run --no-fail-fast "$@"
