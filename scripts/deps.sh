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

# LocalStack's S3 (localstack-core, run in-process without Docker): the one local server found
# that lists part checksums (GetObjectAttributes ObjectParts), so composite multipart
# verification is tested end to end against it (tests/composite_e2e.rs). It needs Python 3.12+
# and versions its own metadata does not pin (cbor2 6 moved a module it imports; pyOpenSSL 24.3+
# dropped a call it makes at start and needs cryptography < 44, which pip's resolver refuses
# beside joserfc's >= 45, unused here): scripts/localstack-requirements.txt is a working set,
# installed exactly as listed with --no-deps. The test runs it inside a network namespace with
# only a loopback interface, so it can reach nothing but 127.0.0.1.
ls_venv="${HOARDFS_LOCALSTACK_VENV:-/var/tmp/hoardfs-localstack}"
if ! "$ls_venv/bin/python" -c 'import localstack.services.s3.provider' 2>/dev/null; then
  py=""
  for c in python3.13 python3.12 /root/.pyenv/versions/3.13*/bin/python3 /root/.pyenv/versions/3.12*/bin/python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" 2>/dev/null -c 'import sys; raise SystemExit(sys.version_info < (3, 12))'; then py="$c"; break; fi
  done
  if [ -z "$py" ]; then
    echo "deps: apt-get install python3.13-venv (LocalStack needs Python 3.12 or later)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.13 python3.13-venv >/dev/null
    py=python3.13
  fi
  echo "deps: LocalStack S3 in $ls_venv ($("$py" --version))"
  rm -rf "$ls_venv"
  "$py" -m venv "$ls_venv"
  "$ls_venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$(dirname "$0")/localstack-requirements.txt"
fi
