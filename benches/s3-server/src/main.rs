//! The S3 server of `benches/scale.py`: s3s-fs's directory backend (objects are files under
//! ROOT/BUCKET/, so a benchmark writes 10^6 of them directly) behind a listener that sets
//! TCP_NODELAY on every connection.
//!
//! Why not the `s3s-fs` binary itself: it leaves Nagle's algorithm on and streams bodies in
//! 4 KiB writes, so the last segment of a small response waits for the client's delayed ACK
//! (about 40 ms): 146 files/s of 16 KiB with 8 parallel readers, measured here, against 3,500
//! from the disk. With TCP_NODELAY the same bodies go out at once. Bodies are still streamed in
//! 4 KiB chunks (the backend's choice), which caps single large GETs; the scale benchmark reads
//! small objects.
//!
//! s3s-fs also leaves ETags out of listings (it derives them from stored metadata, which objects
//! written straight into the directory do not have, and lists without it). Real S3 always lists
//! them, and hoardfs pins a version by the listed ETag, or HEADs at open when there is none; so
//! [`Listed`] adds the MD5 ETag (what s3s-fs's HEAD and GET compute for such files) to each
//! listed object, keeping the benchmark's request pattern S3's.
//!
//! With `HOARDFS_BENCH_GET_DELAY_MS=N` in its environment, every GetObject waits N ms before it
//! answers: the first-byte latency of a far S3 endpoint (tens of ms), on loopback, so that a
//! benchmark shows what a reader loses to it (how many GETs it keeps in flight), not only what
//! it costs in CPU.
//!
//! Usage: hoardfs-bench-s3 ADDR ROOT   (credentials: bench / bench)

use hyper_util::rt::{TokioExecutor, TokioIo};
use md5::Digest;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3Request, S3Response, S3Result, S3};

/// s3s-fs with ETags in listings; every other operation passed through.
struct Listed {
    fs: s3s_fs::FileSystem,
    root: std::path::PathBuf,
    /// Added before every GetObject's answer (`HOARDFS_BENCH_GET_DELAY_MS`).
    get_delay: std::time::Duration,
}

#[async_trait::async_trait]
impl S3 for Listed {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn get_bucket_location(&self, req: S3Request<GetBucketLocationInput>) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        if !self.get_delay.is_zero() {
            tokio::time::sleep(self.get_delay).await;
        }
        self.fs.get_object(req).await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.fs.put_object(req).await
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fs.delete_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.fs.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.fs.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.fs.abort_multipart_upload(req).await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let bucket = self.root.join(&req.input.bucket);
        let mut resp = self.fs.list_objects_v2(req).await?;
        for object in resp.output.contents.iter_mut().flatten() {
            if let (None, Some(key)) = (&object.e_tag, &object.key) {
                if let Ok(bytes) = tokio::fs::read(bucket.join(key)).await {
                    let hex: String = md5::Md5::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
                    object.e_tag = Some(ETag::Strong(hex));
                }
            }
        }
        Ok(resp)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, root] = args.as_slice() else {
        return Err("usage: hoardfs-bench-s3 ADDR ROOT".into());
    };
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| format!("{root}: {e:?}"))?;
    let delay_ms = match std::env::var("HOARDFS_BENCH_GET_DELAY_MS") {
        Ok(ms) => ms.parse().map_err(|e| format!("HOARDFS_BENCH_GET_DELAY_MS={ms}: {e} (want whole milliseconds)"))?,
        Err(_) => 0,
    };
    let get_delay = std::time::Duration::from_millis(delay_ms);
    let mut builder = S3ServiceBuilder::new(Listed { fs, root: root.into(), get_delay });
    builder.set_auth(SimpleAuth::from_single("bench", "bench"));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(addr.as_str()).await?;
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
