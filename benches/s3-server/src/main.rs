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
//! Usage: hoardfs-bench-s3 ADDR ROOT   (credentials: bench / bench)

use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, root] = args.as_slice() else {
        return Err("usage: hoardfs-bench-s3 ADDR ROOT".into());
    };
    let mut builder = S3ServiceBuilder::new(s3s_fs::FileSystem::new(root).map_err(|e| format!("{root}: {e:?}"))?);
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
