//! The live view: a small HTTP server with a page showing the overlaid MJPEG
//! stream, FPS, latency and class fractions, plus `/metrics` in Prometheus
//! text format.
//!
//! The pipeline only ever replaces the latest picture and statistics; each
//! client has its own thread that sends the newest picture when it is ready
//! for one, so slow or many clients never stall the pipeline (they see fewer
//! frames instead).
//!
//! It may face a whole network for weeks, so it is its own small HTTP/1.1
//! server with every resource bounded: a request head of at most
//! [`MAX_HEAD_BYTES`] received within [`HEAD_TIMEOUT`], [`MAX_CONNECTIONS`]
//! at once (more get 503 without a thread), writes that give up after
//! [`WRITE_TIMEOUT`], one request per connection, GET and HEAD only. (It
//! replaced tiny_http 0.12, which has no header limit and no read timeout:
//! one client sending an endless header grew the process by hundreds of MB.)
//! The `Host` header must name this machine (DNS rebinding), an optional
//! token guards every path ([`Access`]), and what comes from the model file
//! (class names) is escaped in JSON and Prometheus output and only ever set
//! as text in the page.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the page and `/metrics` show, updated once per frame.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LiveStats {
    /// Frames processed.
    pub frames: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Recent frames per second.
    pub fps: f64,
    /// Recent mean latency per stage, milliseconds.
    pub latency_ms: Vec<(String, f64)>,
    /// Share of pixels of each class in the latest frame.
    pub fractions: Vec<(String, f64)>,
    /// Model architecture and precision.
    pub model: String,
}

#[derive(Debug, Default)]
struct Latest {
    seq: u64,
    jpeg: Arc<Vec<u8>>,
    stats: LiveStats,
    closed: bool,
}

/// Why the live view could not start.
#[derive(Debug, thiserror::Error)]
#[error("live view on {addr}: {message}")]
pub struct LiveError {
    /// The address asked for.
    pub addr: String,
    /// What went wrong.
    pub message: String,
}

/// Who may use the live view.
///
/// The binary reads it from the environment ([`Access::from_env`]), never
/// from the command line, where `ps` would show the token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// A token every request must carry, as `Authorization: Bearer TOKEN` or
    /// as `?token=TOKEN` in the page's address (the page passes it on).
    pub token: Option<String>,
    /// Host names accepted in the `Host` header besides IP addresses,
    /// `localhost` and this machine's own name (and `NAME.local`). Any other
    /// name is refused, so a web page cannot reach the view through DNS
    /// rebinding.
    pub hosts: Vec<String>,
}

/// Where [`Access::from_env`] looks.
pub const TOKEN_ENV: &str = "EDGESEG_LIVE_TOKEN";
/// A file holding the token (first line), for systemd's `LoadCredential` or
/// a file only the service user can read.
pub const TOKEN_FILE_ENV: &str = "EDGESEG_LIVE_TOKEN_FILE";
/// Comma-separated extra host names (a DNS name the board is reached by).
pub const HOSTS_ENV: &str = "EDGESEG_LIVE_HOSTS";

impl Access {
    /// From [`TOKEN_FILE_ENV`] or [`TOKEN_ENV`], and [`HOSTS_ENV`].
    pub fn from_env() -> Result<Access, String> {
        let token = match (std::env::var_os(TOKEN_FILE_ENV), std::env::var(TOKEN_ENV)) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{TOKEN_FILE_ENV}={}: {e}", Path::new(&path).display()))?;
                Some(text.lines().next().unwrap_or("").trim().to_string())
            }
            (None, Ok(token)) => Some(token.trim().to_string()),
            (None, Err(_)) => None,
        };
        if let Some(token) = &token {
            check_token(token)?;
        }
        let hosts = std::env::var(HOSTS_ENV)
            .map(|h| {
                h.split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Access { token, hosts })
    }
}

/// A token must be long enough not to be guessed, and safe in an address.
fn check_token(token: &str) -> Result<(), String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    if token.len() < 16 || !token.chars().all(safe) {
        return Err(format!(
            "the live view's token must be at least 16 characters of A-Z, a-z, 0-9 and -._~ \
             (for example: head -c 24 /dev/urandom | base64 | tr '+/' '-_'); \
             it has {} characters",
            token.len()
        ));
    }
    Ok(())
}

/// Longest request head (request line and headers) read; longer is refused
/// with 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a write to a client may block (a stream client that stops reading is
/// let go after it).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (each has a thread); more get 503 at once.
pub const MAX_CONNECTIONS: usize = 32;

/// A running live view; dropping it stops serving.
pub struct LiveView {
    shared: Arc<(Mutex<Latest>, Condvar)>,
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

const PAGE: &str = include_str!("live.html");

/// Counts a connection for as long as it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LiveView {
    /// Serves on `addr` (`127.0.0.1:8080`, or `0.0.0.0:8080` to be reachable
    /// from the network; port 0 picks a free port), with the access rules of
    /// the environment ([`Access::from_env`]).
    pub fn start(addr: &str) -> Result<LiveView, LiveError> {
        let access = Access::from_env().map_err(|message| LiveError {
            addr: addr.into(),
            message,
        })?;
        LiveView::start_with(addr, access)
    }

    /// Serves on `addr` with `access`.
    pub fn start_with(addr: &str, access: Access) -> Result<LiveView, LiveError> {
        let fail = |message: String| LiveError {
            addr: addr.into(),
            message,
        };
        if let Some(token) = &access.token {
            check_token(token).map_err(fail)?;
        }
        let listener = TcpListener::bind(addr).map_err(|e| fail(e.to_string()))?;
        let local = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let shared = Arc::new((Mutex::new(Latest::default()), Condvar::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let rules = Arc::new(Rules::new(access));
        {
            let (shared, stopping) = (shared.clone(), stopping.clone());
            let active = Arc::new(AtomicUsize::new(0));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        active.fetch_sub(1, Ordering::SeqCst);
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = respond(&mut stream, 503, "text/plain", &[], b"busy\n");
                        continue;
                    }
                    let slot = Slot(active.clone());
                    let (shared, rules) = (shared.clone(), rules.clone());
                    std::thread::spawn(move || {
                        let _slot = slot;
                        serve(stream, &shared, &rules);
                    });
                }
            });
        }
        Ok(LiveView {
            shared,
            addr: local,
            stopping,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Publishes a new picture (JPEG bytes) and the statistics to show with it.
    pub fn publish(&self, jpeg: Vec<u8>, stats: LiveStats) {
        let (lock, ready) = &*self.shared;
        let mut latest = lock.lock().expect("live view lock");
        latest.seq += 1;
        latest.jpeg = Arc::new(jpeg);
        latest.stats = stats;
        ready.notify_all();
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        let (lock, ready) = &*self.shared;
        lock.lock().expect("live view lock").closed = true;
        ready.notify_all();
        // Wake the accepting thread so it sees the stop.
        self.stopping.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_millis(200));
    }
}

/// The access rules, prepared once.
struct Rules {
    access: Access,
    /// This machine's name, lower case, if known.
    hostname: Option<String>,
}

impl Rules {
    fn new(access: Access) -> Rules {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        Rules { access, hostname }
    }

    /// Whether `host` (a `Host` header's value) names this view.
    fn host_allowed(&self, host: &str) -> bool {
        let name = if let Some(rest) = host.strip_prefix('[') {
            // [IPv6]:port
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        } else {
            host.rsplit_once(':').map_or(host, |(name, _)| name)
        };
        let name = name.to_ascii_lowercase();
        name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || self
                .hostname
                .as_ref()
                .is_some_and(|h| name == *h || name == format!("{h}.local"))
            || self.access.hosts.contains(&name)
    }

    /// Whether the request carries the token (when one is required).
    fn authorized(&self, query: &str, authorization: Option<&str>) -> bool {
        let Some(token) = &self.access.token else {
            return true;
        };
        let given = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
            .or_else(|| query.split('&').find_map(|kv| kv.strip_prefix("token=")));
        given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The parts of a request the view looks at.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    query: String,
    host: Option<String>,
    authorization: Option<String>,
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Longer than [`MAX_HEAD_BYTES`].
    TooLarge,
    /// Not complete within [`HEAD_TIMEOUT`], or the connection closed.
    Incomplete,
    /// Not an HTTP request.
    Malformed,
}

/// Reads one request head from `stream`, within [`MAX_HEAD_BYTES`] and
/// [`HEAD_TIMEOUT`].
fn read_head(stream: &mut impl Read, deadline: Instant) -> Result<Request, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        if Instant::now() >= deadline {
            return Err(HeadError::Incomplete);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(HeadError::Incomplete),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            // The socket's read timeout only wakes the loop to check the deadline.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Err(HeadError::Incomplete),
        }
    };
    if end > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    parse_head(&head[..end])
}

fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        host: None,
        authorization: None,
    };
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HeadError::Malformed)?;
        let value = value.trim().to_string();
        if name.eq_ignore_ascii_case("host") {
            if request.host.is_some() {
                return Err(HeadError::Malformed);
            }
            request.host = Some(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            request.authorization = Some(value);
        }
    }
    Ok(request)
}

/// Writes a whole response and closes the exchange.
fn respond(
    out: &mut impl Write,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        body.len()
    );
    for (k, v) in extra {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// The page may only run its own inline script and talk to this view.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'";

fn serve(mut stream: TcpStream, shared: &(Mutex<Latest>, Condvar), rules: &Rules) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request = match read_head(&mut stream, Instant::now() + HEAD_TIMEOUT) {
        Ok(r) => r,
        Err(HeadError::TooLarge) => {
            let _ = respond(
                &mut stream,
                431,
                "text/plain",
                &[],
                b"request head too large\n",
            );
            return;
        }
        Err(HeadError::Incomplete) => {
            let _ = respond(&mut stream, 408, "text/plain", &[], b"request timeout\n");
            return;
        }
        Err(HeadError::Malformed) => {
            let _ = respond(&mut stream, 400, "text/plain", &[], b"bad request\n");
            return;
        }
    };
    if !request
        .host
        .as_deref()
        .is_some_and(|h| rules.host_allowed(h))
    {
        let _ = respond(&mut stream, 403, "text/plain", &[], b"unknown host name\n");
        return;
    }
    if request.method != "GET" && request.method != "HEAD" {
        let _ = respond(
            &mut stream,
            405,
            "text/plain",
            &[("Allow", "GET, HEAD")],
            b"",
        );
        return;
    }
    if !rules.authorized(&request.query, request.authorization.as_deref()) {
        let _ = respond(
            &mut stream,
            401,
            "text/plain",
            &[("WWW-Authenticate", "Bearer")],
            b"a token is needed: open the page as /?token=TOKEN\n",
        );
        return;
    }
    let head_only = request.method == "HEAD";
    let send = |stream: &mut TcpStream, content_type: &str, extra: &[(&str, &str)], body: &[u8]| {
        let body = if head_only { &[][..] } else { body };
        let _ = respond(stream, 200, content_type, extra, body);
    };
    match request.path.as_str() {
        "/" => send(
            &mut stream,
            "text/html; charset=utf-8",
            &[
                ("Content-Security-Policy", PAGE_POLICY),
                ("X-Frame-Options", "DENY"),
                ("Referrer-Policy", "no-referrer"),
            ],
            PAGE.as_bytes(),
        ),
        "/stats.json" => {
            let stats = shared.0.lock().expect("live view lock").stats.clone();
            let body = serde_json::to_string(&stats).unwrap_or_default();
            send(&mut stream, "application/json", &[], body.as_bytes());
        }
        "/metrics" => {
            let stats = shared.0.lock().expect("live view lock").stats.clone();
            send(
                &mut stream,
                "text/plain; version=0.0.4",
                &[],
                metrics(&stats).as_bytes(),
            );
        }
        "/frame.jpg" => {
            let jpeg = shared.0.lock().expect("live view lock").jpeg.clone();
            send(&mut stream, "image/jpeg", &[], &jpeg);
        }
        "/stream" if !head_only => stream_to(stream, shared),
        _ => {
            let _ = respond(&mut stream, 404, "text/plain", &[], b"not found\n");
        }
    }
}

/// Sends the newest picture each time one is published, as multipart MJPEG,
/// until the client goes away (or stops reading for [`WRITE_TIMEOUT`]) or
/// the view closes.
fn stream_to(mut out: TcpStream, shared: &(Mutex<Latest>, Condvar)) {
    let boundary = "edgesegframe";
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={boundary}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    );
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let (lock, ready) = shared;
    let mut seen = 0;
    loop {
        let jpeg = {
            let mut latest = lock.lock().expect("live view lock");
            while latest.seq == seen && !latest.closed {
                latest = ready
                    .wait_timeout(latest, Duration::from_secs(5))
                    .expect("live view lock")
                    .0;
            }
            if latest.closed {
                return;
            }
            seen = latest.seq;
            latest.jpeg.clone()
        };
        let part = format!(
            "--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        );
        let sent = out
            .write_all(part.as_bytes())
            .and_then(|()| out.write_all(&jpeg))
            .and_then(|()| out.write_all(b"\r\n"))
            .and_then(|()| out.flush());
        if sent.is_err() {
            return;
        }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The statistics in Prometheus text format.
pub fn metrics(stats: &LiveStats) -> String {
    let mut s = String::new();
    s += "# HELP edgeseg_frames_total Frames segmented.\n# TYPE edgeseg_frames_total counter\n";
    s += &format!("edgeseg_frames_total {}\n", stats.frames);
    s += "# HELP edgeseg_dropped_total Frames dropped because a stage fell behind.\n# TYPE edgeseg_dropped_total counter\n";
    s += &format!("edgeseg_dropped_total {}\n", stats.dropped);
    s += "# HELP edgeseg_fps Recent frames per second.\n# TYPE edgeseg_fps gauge\n";
    s += &format!("edgeseg_fps {}\n", stats.fps);
    s += "# HELP edgeseg_latency_ms Recent mean latency per stage.\n# TYPE edgeseg_latency_ms gauge\n";
    for (stage, ms) in &stats.latency_ms {
        s += &format!("edgeseg_latency_ms{{stage=\"{}\"}} {ms}\n", label(stage));
    }
    s += "# HELP edgeseg_class_fraction Share of pixels of each class in the latest frame.\n# TYPE edgeseg_class_fraction gauge\n";
    for (class, f) in &stats.fractions {
        s += &format!("edgeseg_class_fraction{{class=\"{}\"}} {f}\n", label(class));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpStream;

    fn get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
        request(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        )
    }

    /// Sends `head` as is; the response's head and body.
    fn request(addr: SocketAddr, head: &str) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).unwrap();
        let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&bytes[..split]).into_owned(),
            bytes[split + 4..].to_vec(),
        )
    }

    fn stats(frames: u64) -> LiveStats {
        LiveStats {
            frames,
            dropped: 1,
            fps: 12.5,
            latency_ms: vec![("inference".into(), 40.0), ("total".into(), 55.0)],
            fractions: vec![("Road".into(), 0.4), ("Sky".into(), 0.2)],
            model: "unet16 float32".into(),
        }
    }

    #[test]
    fn serves_page_stats_metrics_and_a_stream_to_many_clients() {
        let view = LiveView::start("127.0.0.1:0").unwrap();
        let addr = view.addr();
        view.publish(vec![0xFF, 0xD8, 1, 0xFF, 0xD9], stats(1));
        let (head, page) = get(addr, "/");
        assert!(head.contains("200") && String::from_utf8_lossy(&page).contains("/stream"));
        let (_, json) = get(addr, "/stats.json");
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(json["frames"], 1);
        let (_, text) = get(addr, "/metrics");
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("edgeseg_frames_total 1"), "{text}");
        assert!(
            text.contains("edgeseg_latency_ms{stage=\"inference\"} 40"),
            "{text}"
        );
        assert!(
            text.contains("edgeseg_class_fraction{class=\"Road\"} 0.4"),
            "{text}"
        );
        assert!(get(addr, "/nope").0.contains("404"));

        // Ten stream clients, one of which never reads: publishing never blocks,
        // and each reading client gets the frames.
        let _stalled = {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET /stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
            s
        };
        let readers: Vec<_> = (0..9)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                write!(s, "GET /stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                BufReader::new(s)
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let big = vec![7u8; 200_000];
        for i in 0..40 {
            view.publish(big.clone(), stats(i));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "publishing stalled"
        );
        for mut r in readers {
            // Every reader gets a whole part of the newest picture.
            let mut line = String::new();
            while !line.starts_with("--edgesegframe") {
                line.clear();
                assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
            }
            line.clear();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "Content-Type: image/jpeg\r\n");
            line.clear();
            r.read_line(&mut line).unwrap();
            let len: usize = line
                .trim()
                .strip_prefix("Content-Length: ")
                .unwrap()
                .parse()
                .unwrap();
            // The first picture or one of the big ones, whole.
            assert!(len == 5 || len == big.len(), "{len}");
            line.clear();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "\r\n");
            let mut body = vec![0; len + 2];
            r.read_exact(&mut body).unwrap();
            assert!(body.ends_with(b"\r\n"));
        }
    }

    #[test]
    fn an_endless_header_is_cut_off_at_the_limit() {
        let view = LiveView::start_with("127.0.0.1:0", Access::default()).unwrap();
        let mut s = TcpStream::connect(view.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
        let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
        // Keep sending until the server answers and closes (a write fails or
        // the answer is there); it must not take more than the limit's worth.
        let mut sent = 0;
        while sent < 1 << 20 && s.write_all(line.as_bytes()).is_ok() {
            sent += line.len();
            if sent > 4 * MAX_HEAD_BYTES {
                break;
            }
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    #[test]
    fn half_sent_requests_time_out_and_connections_are_capped() {
        let view = LiveView::start_with("127.0.0.1:0", Access::default()).unwrap();
        let addr = view.addr();
        // Slowloris: many connections that send half a request line.
        let started = Instant::now();
        let mut idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 8)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET / HT").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                s
            })
            .collect();
        // Those past the cap are refused at once, without a thread each.
        let mut refused = 0;
        for s in idle.iter_mut().skip(MAX_CONNECTIONS) {
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            refused += 1;
        }
        assert_eq!(refused, 8);
        // The others are let go after the head timeout, not held forever.
        let mut answer = String::new();
        let _ = idle[0].read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        let waited = started.elapsed();
        assert!(
            waited >= HEAD_TIMEOUT && waited < HEAD_TIMEOUT * 3,
            "{waited:?}"
        );
        drop(idle);
        // And the view serves again.
        std::thread::sleep(Duration::from_millis(300));
        assert!(get(addr, "/stats.json").0.contains("200"));
    }

    #[test]
    fn foreign_host_names_and_missing_tokens_are_refused() {
        let view = LiveView::start_with(
            "127.0.0.1:0",
            Access {
                token: Some("s3cret-token-0123456789".into()),
                hosts: vec!["board.example.org".into()],
            },
        )
        .unwrap();
        let addr = view.addr();
        let head = |host: &str, extra: &str, path: &str| {
            request(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
            )
            .0
        };
        let auth = "Authorization: Bearer s3cret-token-0123456789\r\n";
        // DNS rebinding: a name that is not this machine's.
        assert!(head("evil.example.com", auth, "/").contains("403"));
        assert!(head("evil.example.com:8080", auth, "/").contains("403"));
        assert!(
            request(addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .contains("403")
        );
        for host in [
            "127.0.0.1:8080",
            "localhost",
            "[::1]:80",
            "board.example.org",
            "BOARD.example.org:1",
        ] {
            assert!(head(host, auth, "/").contains("200"), "{host}");
        }
        // The token guards every path.
        for path in ["/", "/stats.json", "/metrics", "/frame.jpg", "/stream"] {
            assert!(head("127.0.0.1", "", path).contains("401"), "{path}");
            assert!(
                head(
                    "127.0.0.1",
                    "Authorization: Bearer wrong-token-0123456789\r\n",
                    path
                )
                .contains("401"),
                "{path}"
            );
        }
        assert!(head("127.0.0.1", "", "/stats.json?token=s3cret-token-0123456789").contains("200"));
        assert!(head("127.0.0.1", "", "/stats.json?token=s3cret").contains("401"));
        // Only reading is allowed.
        let post = request(
            addr,
            &format!("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"),
        );
        assert!(post.0.contains("405"), "{}", post.0);
        // A short or unsafe token is refused at start.
        for token in ["short", "has space in the token 123"] {
            let access = Access {
                token: Some(token.into()),
                hosts: vec![],
            };
            assert!(LiveView::start_with("127.0.0.1:0", access).is_err());
        }
    }

    #[test]
    fn names_from_the_model_file_are_escaped() {
        let mut s = stats(1);
        s.fractions = vec![
            ("Road\"} 1\nedgeseg_injected 1\n#".into(), 0.5),
            ("<img src=x onerror=alert(1)>".into(), 0.5),
        ];
        let text = metrics(&s);
        assert!(
            !text.lines().any(|l| l.starts_with("edgeseg_injected")),
            "{text}"
        );
        assert!(
            text.contains(
                r#"edgeseg_class_fraction{class="Road\"} 1\nedgeseg_injected 1\n#"} 0.5"#
            ),
            "{text}"
        );
        // The page never parses data as HTML.
        assert!(!PAGE.contains("innerHTML"));
        let view = LiveView::start_with("127.0.0.1:0", Access::default()).unwrap();
        view.publish(vec![1], s);
        let (head, json) = get(view.addr(), "/stats.json");
        assert!(head.contains("application/json"));
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(json["fractions"][1][0], "<img src=x onerror=alert(1)>");
        let (head, _) = get(view.addr(), "/");
        assert!(
            head.contains("Content-Security-Policy: default-src 'none'"),
            "{head}"
        );
    }
}
