//! The live view: a small HTTP server with a page showing the overlaid MJPEG
//! stream, FPS, latency and class fractions, plus `/metrics` in Prometheus
//! text format.
//!
//! The pipeline only ever replaces the latest picture and statistics; each
//! client has its own thread that sends the newest picture when it is ready
//! for one, so slow or many clients never stall the pipeline (they see fewer
//! frames instead).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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

/// A running live view; dropping it stops serving new frames.
pub struct LiveView {
    shared: Arc<(Mutex<Latest>, Condvar)>,
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

const PAGE: &str = include_str!("live.html");

impl LiveView {
    /// Serves on `addr` (`127.0.0.1:8080`, or `0.0.0.0:8080` to be reachable
    /// from the network; port 0 picks a free port).
    pub fn start(addr: &str) -> Result<LiveView, LiveError> {
        let fail = |message: String| LiveError {
            addr: addr.into(),
            message,
        };
        let server = tiny_http::Server::http(addr).map_err(|e| fail(e.to_string()))?;
        let local = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| fail("not an IP address".into()))?;
        let server = Arc::new(server);
        let shared = Arc::new((Mutex::new(Latest::default()), Condvar::new()));
        {
            let (server, shared) = (server.clone(), shared.clone());
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    let shared = shared.clone();
                    std::thread::spawn(move || serve(request, &shared));
                }
            });
        }
        Ok(LiveView {
            shared,
            addr: local,
            server,
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
        self.server.unblock();
    }
}

fn serve(request: tiny_http::Request, shared: &(Mutex<Latest>, Condvar)) {
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k, v).expect("valid header");
    let url = request.url().split('?').next().unwrap_or("/").to_string();
    let _ = match url.as_str() {
        "/" => request.respond(
            tiny_http::Response::from_string(PAGE)
                .with_header(header("Content-Type", "text/html; charset=utf-8")),
        ),
        "/stats.json" => {
            let stats = shared.0.lock().expect("live view lock").stats.clone();
            let body = serde_json::to_string(&stats).unwrap_or_default();
            request.respond(
                tiny_http::Response::from_string(body)
                    .with_header(header("Content-Type", "application/json")),
            )
        }
        "/metrics" => {
            let stats = shared.0.lock().expect("live view lock").stats.clone();
            request.respond(
                tiny_http::Response::from_string(metrics(&stats))
                    .with_header(header("Content-Type", "text/plain; version=0.0.4")),
            )
        }
        "/frame.jpg" => {
            let jpeg = shared.0.lock().expect("live view lock").jpeg.clone();
            request.respond(
                tiny_http::Response::from_data(jpeg.as_slice())
                    .with_header(header("Content-Type", "image/jpeg")),
            )
        }
        "/stream" => {
            stream(request.into_writer(), shared);
            Ok(())
        }
        _ => request.respond(tiny_http::Response::from_string("not found").with_status_code(404)),
    };
}

/// Sends the newest picture each time one is published, as multipart MJPEG,
/// until the client goes away or the view closes.
fn stream(mut out: Box<dyn Write + Send>, shared: &(Mutex<Latest>, Condvar)) {
    let boundary = "edgesegframe";
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={boundary}\r\n\
         Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
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
        s += &format!("edgeseg_latency_ms{{stage=\"{stage}\"}} {ms}\n");
    }
    s += "# HELP edgeseg_class_fraction Share of pixels of each class in the latest frame.\n# TYPE edgeseg_class_fraction gauge\n";
    for (class, f) in &stats.fractions {
        let class = class.replace(['"', '\\'], "_");
        s += &format!("edgeseg_class_fraction{{class=\"{class}\"}} {f}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpStream;

    fn get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
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
            write!(s, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        };
        let readers: Vec<_> = (0..9)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                write!(s, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
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
            let mut line = String::new();
            let mut parts = 0;
            while parts < 1 {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line.starts_with("--edgesegframe") {
                    parts += 1;
                }
            }
            assert_eq!(parts, 1);
        }
    }
}
