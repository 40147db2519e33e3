#!/usr/bin/env bash
# Installs what hoardfs's tests, demo and benchmarks need on a fresh Debian machine that has only
# the Rust toolchain, gcc and Python. Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
if [ "${HOARDFS_BENCH_DEPS:-0}" = 1 ]; then
  command -v fio >/dev/null || need_apt+=(fio)
  command -v rclone >/dev/null || need_apt+=(rclone)
  command -v s3fs >/dev/null || need_apt+=(s3fs)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# moto: the local S3-compatible server the tests and the demo run on 127.0.0.1. 5.2.5 or later:
# 5.2.1 computes multipart full-object CRC64NVME wrongly and misnames the completion XML.
if ! python3 - <<'PY' 2>/dev/null
import moto.server, flask
v = tuple(int(x) for x in moto.__version__.split(".")[:3])
raise SystemExit(0 if (5, 2, 5) <= v < (6,) else 1)
PY
then
  echo "deps: pip install moto[server]==5.2.5"
  python3 -m pip install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi
command -v moto_server >/dev/null || {
  echo "deps: moto_server is not on PATH after installing moto; add Python's script directory to PATH" >&2
  exit 1
}
command -v cargo-nextest >/dev/null || cargo install -q cargo-nextest --locked
