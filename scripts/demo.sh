#!/usr/bin/env bash
# The main job, end to end: mount a bucket with hoardfs and read it for three "epochs".
#
#   scripts/demo.sh                      # bundled local S3 server (moto) with a sample dataset
#   scripts/demo.sh s3://bucket/prefix   # your bucket, with AWS credentials from the environment
#
# Epoch 1 streams from S3, epoch 2 reads the cache (page cache dropped first), then the mount is
# remounted and epoch 3 shows that no data is fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -q
BIN=$PWD/target/release/hoardfs
WORK=${HOARDFS_DEMO_DIR:-/tmp/hoardfs-demo}
MNT=$WORK/mnt
CACHE=$WORK/cache
METRICS=127.0.0.1:${HOARDFS_DEMO_METRICS_PORT:-9477}
mkdir -p "$MNT"
mkdir -p -m 700 "$CACHE"  # the cache holds key names and data: private, as hoardfs asks
fusermount3 -u "$MNT" 2>/dev/null || true

SOURCE=${1:-}
EXTRA=()
MOTO_PID=
cleanup() {
  fusermount3 -u "$MNT" 2>/dev/null || true
  [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null || true
}
trap cleanup EXIT

if [ -z "$SOURCE" ]; then
  export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
  MOTO_PID=$!
  ENDPOINT=http://127.0.0.1:$PORT
  python3 - "$ENDPOINT" <<'PY'
import os, sys, time, boto3
endpoint = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=endpoint)
for _ in range(100):
    try:
        s3.list_buckets(); break
    except Exception:
        time.sleep(0.1)
s3.create_bucket(Bucket="demo-dataset")
for i in range(300):  # small files: images, clips
    s3.put_object(Bucket="demo-dataset", Key=f"train/images/class-{i % 10}/img-{i:04d}.jpg", Body=os.urandom(96 * 1024))
for i in range(2):     # large shards
    s3.put_object(Bucket="demo-dataset", Key=f"train/shards/shard-{i:02d}.tar", Body=os.urandom(48 << 20))
print(f"uploaded a sample dataset to s3://demo-dataset/train on {endpoint}")
PY
  SOURCE=s3://demo-dataset/train
  EXTRA=(--endpoint-url "$ENDPOINT" --force-path-style)
  rm -rf "$CACHE"; mkdir -p -m 700 "$CACHE"
fi

mount_it() { "$BIN" mount "$SOURCE" "$MNT" --cache-dir "$CACHE" --metrics-addr "$METRICS" "${EXTRA[@]}"; }
gets() { curl -s "http://$METRICS/metrics" | awk '/^hoardfs_s3_get_requests_total/ {print $2}'; }
epoch() {
  python3 - "$MNT" "$1" <<'PY'
import os, random, sys, time, hashlib
root, name = sys.argv[1], sys.argv[2]
files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
random.shuffle(files)
t = time.time(); total = 0
for p in files:
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
dt = time.time() - t
print(f"{name}: {len(files)} files, {total / 1e6:.0f} MB in {dt:.2f} s = {total / 1e6 / dt:.0f} MB/s")
PY
}
drop_page_cache() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(cannot drop the page cache: not root)"; }

mount_it
epoch "epoch 1 (cold, from S3)";            echo "  GetObject requests so far: $(gets)"
drop_page_cache
epoch "epoch 2 (warm, from local cache)";   echo "  GetObject requests so far: $(gets)"
fusermount3 -u "$MNT"; sleep 0.5
mount_it
drop_page_cache
epoch "epoch 3 (after remount)";            echo "  GetObject requests since remount: $(gets)"
echo "cache directory: $CACHE ($(du -sh "$CACHE" | cut -f1))"
