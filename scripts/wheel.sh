#!/usr/bin/env bash
# Builds the wheel (the release binary plus python/hoardfs) with maturin into target/wheels, and
# installs it into a fresh virtualenv, target/py-venv, the way a user's `pip install` would.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v maturin >/dev/null || python3 -m pip install -q --disable-pip-version-check 'maturin>=1.5,<2'
rm -rf target/wheels target/py-venv
maturin build --release --quiet --out target/wheels
python3 -m venv target/py-venv
target/py-venv/bin/pip install -q --disable-pip-version-check --no-index target/wheels/hoardfs-*.whl
echo "wheel: $(ls target/wheels/*.whl) installed into target/py-venv"
