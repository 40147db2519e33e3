//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of the test S3 server: 503 SlowDown
//! answers, connections reset mid-body, slow responses, flipped bytes in object bodies. It
//! understands just enough HTTP (request/response heads, Content-Length bodies, keep-alive). It
//! can also hold every object GET's answer (a far endpoint's latency) and counts GETs in flight.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

/// Probabilities per request, and counters of what was injected.
#[derive(Default)]
pub struct Faults {
    pub slowdown: f64,
    pub reset_mid_body: f64,
    pub slow: f64,
    pub corrupt: f64,
    /// Answer HeadBucket with 403, as S3 does for credentials allowed to list only under a
    /// prefix (an `s3:prefix` condition in the policy).
    pub deny_head_bucket: bool,
    /// Hold every object GET's answer this long: the first-byte latency of a far endpoint.
    pub get_delay: Duration,
    /// Object GETs sent upstream and not yet answered, and the most there ever were at once.
    pub gets_in_flight: AtomicU64,
    pub most_gets_in_flight: AtomicU64,
    pub injected: AtomicU64,
    pub requests: AtomicU64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(faults);
        let stop = Arc::new(AtomicBool::new(false));
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(1234)));
        let (f, s) = (faults.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (f, rng) = (f.clone(), rng.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, upstream, &f, &rng);
                });
            }
        });
        Self { addr, faults, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

/// Reads a head (up to the blank line) and the Content-Length body after it (none when
/// `bodyless`: the answer to a HEAD request).
fn read_message(r: &mut BufReader<TcpStream>, bodyless: bool) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = if bodyless { Some(0) } else { None };
    let len = len.unwrap_or_else(|| {
        head.lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
            .unwrap_or(0)
    });
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some((head, body)))
}

/// `HEAD /bucket` (path style, no key): a HeadBucket request.
fn is_head_bucket(head: &str) -> bool {
    let path = head.lines().next().unwrap_or("").split(' ').nth(1).unwrap_or("");
    head.starts_with("HEAD ") && !path.trim_matches('/').contains('/') && !path.contains('?')
}

fn serve(client: TcpStream, upstream: SocketAddr, f: &Faults, rng: &Mutex<rand::rngs::StdRng>) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let server = TcpStream::connect(upstream)?;
    let mut from_server = BufReader::new(server.try_clone()?);
    let mut to_server = server;
    while let Some((head, body)) = read_message(&mut from_client, false)? {
        f.requests.fetch_add(1, Ordering::Relaxed);
        let is_object_get = head.starts_with("GET ") && !head.lines().next().unwrap_or("").contains("list-type");
        let roll = |p: f64| rng.lock().unwrap().random_bool(p.clamp(0.0, 1.0));
        if roll(f.slowdown) {
            f.injected.fetch_add(1, Ordering::Relaxed);
            let xml = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            write!(to_client, "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}", xml.len())?;
            continue;
        }
        if f.deny_head_bucket && is_head_bucket(&head) {
            f.injected.fetch_add(1, Ordering::Relaxed);
            write!(to_client, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        if is_object_get {
            let now = f.gets_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            f.most_gets_in_flight.fetch_max(now, Ordering::SeqCst);
        }
        to_server.write_all(head.as_bytes())?;
        to_server.write_all(&body)?;
        let answer = read_message(&mut from_server, head.starts_with("HEAD "));
        if is_object_get {
            std::thread::sleep(f.get_delay);
            f.gets_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        let Some((resp_head, mut resp_body)) = answer? else { return Ok(()) };
        if roll(f.slow) {
            f.injected.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(300));
        }
        let ok = resp_head.starts_with("HTTP/1.1 2");
        if is_object_get && ok && resp_body.len() > 2 && roll(f.reset_mid_body) {
            f.injected.fetch_add(1, Ordering::Relaxed);
            to_client.write_all(resp_head.as_bytes())?;
            to_client.write_all(&resp_body[..resp_body.len() / 2])?;
            let _ = to_client.shutdown(Shutdown::Both);
            return Ok(());
        }
        if is_object_get && ok && !resp_body.is_empty() && roll(f.corrupt) {
            f.injected.fetch_add(1, Ordering::Relaxed);
            let i = rng.lock().unwrap().random_range(0..resp_body.len());
            resp_body[i] ^= 0x20;
        }
        to_client.write_all(resp_head.as_bytes())?;
        to_client.write_all(&resp_body)?;
    }
    Ok(())
}
