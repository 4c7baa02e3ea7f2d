//! Sending the wire protocol ([`crate::protocol`]) over TCP, UDP or a serial
//! device, from a background thread so that a slow or absent consumer never
//! stalls the pipeline: frames wait in a short queue that drops the oldest,
//! and a lost connection is retried with backoff.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::pipeline::DropOldest;
use crate::protocol::{self, FrameHeader, MAX_ENCODED, ProtocolError};

/// Where protocol messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A TCP consumer listening at this address (edgeseg connects to it).
    Tcp(String),
    /// UDP datagrams to this address, one message each.
    Udp(String),
    /// A serial device (configure its baud rate with `stty` first) or any file.
    Serial(PathBuf),
}

/// The messages of one frame, each COBS-framed, concatenated.
pub fn encode_frame(header: FrameHeader, mask: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut buf = [0u8; MAX_ENCODED];
    protocol::frame_messages(header, mask)
        .map(|m| protocol::encode(&m, &mut buf).map(|n| buf[..n].to_vec()))
        .collect()
}

enum Connection {
    Stream(Box<dyn Write + Send>),
    Datagram(UdpSocket, std::net::SocketAddr),
}

fn connect(target: &Target) -> std::io::Result<Connection> {
    match target {
        Target::Tcp(addr) => {
            let addr = addr
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_nodelay(true)?;
            stream.set_write_timeout(Some(Duration::from_secs(2)))?;
            Ok(Connection::Stream(Box::new(stream)))
        }
        Target::Udp(addr) => {
            let addr = addr
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
            let bind = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            Ok(Connection::Datagram(UdpSocket::bind(bind)?, addr))
        }
        Target::Serial(path) => Ok(Connection::Stream(Box::new(
            std::fs::OpenOptions::new().append(true).open(path)?,
        ))),
    }
}

/// A protocol sender running on its own thread.
#[derive(Debug)]
pub struct Sender {
    queue: Arc<DropOldest<Vec<Vec<u8>>>>,
    dropped: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Sender {
    /// Starts sending to `target`; connection errors are retried in the
    /// background (with backoff up to 5 s) and reported once as a warning.
    /// Frames that arrive while there is no connection are dropped and
    /// counted, so `sent + dropped` is every frame given to [`Sender::send`].
    pub fn start(target: Target) -> Sender {
        let queue: Arc<DropOldest<Vec<Vec<u8>>>> = Arc::new(DropOldest::new(4));
        let (dropped, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let worker = {
            let (queue, sent, dropped) = (queue.clone(), sent.clone(), dropped.clone());
            std::thread::spawn(move || {
                let mut connection: Option<Connection> = None;
                let mut backoff = Duration::from_millis(100);
                let mut warned = false;
                // When the next connection attempt is due.
                let mut retry_at = std::time::Instant::now();
                while let Some(messages) = queue.pop() {
                    if connection.is_none() {
                        // While the consumer is away, frames are lost (and
                        // counted), not held; once the run ends, one last
                        // attempt and no more waiting.
                        let closing = queue.is_closed();
                        if !closing && std::time::Instant::now() < retry_at {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        match connect(&target) {
                            Ok(c) => {
                                connection = Some(c);
                                backoff = Duration::from_millis(100);
                            }
                            Err(e) => {
                                if !warned {
                                    log::warn!("protocol sink {target:?}: {e}; retrying");
                                    warned = true;
                                }
                                dropped.fetch_add(1, Ordering::Relaxed);
                                if closing {
                                    // Nobody to send the rest to.
                                    while queue.pop().is_some() {
                                        dropped.fetch_add(1, Ordering::Relaxed);
                                    }
                                    break;
                                }
                                retry_at = std::time::Instant::now() + backoff;
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                                continue;
                            }
                        }
                    }
                    let result = match connection.as_mut().expect("connected") {
                        Connection::Stream(w) => messages
                            .iter()
                            .try_for_each(|m| w.write_all(m))
                            .and_then(|()| w.flush()),
                        Connection::Datagram(socket, addr) => messages
                            .iter()
                            .try_for_each(|m| socket.send_to(m, *addr).map(|_| ())),
                    };
                    match result {
                        Ok(()) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            connection = None;
                        }
                    }
                }
            })
        };
        Sender {
            queue,
            dropped,
            sent,
            worker: Some(worker),
        }
    }

    /// Queues one frame's messages; drops the oldest queued frame if the
    /// consumer is behind.
    pub fn send(&self, messages: Vec<Vec<u8>>) {
        if self.queue.push(messages).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frames sent and frames dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Sends what is queued, then stops.
    pub fn finish(mut self) -> (u64, u64) {
        self.queue.close();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        self.counts()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Decoder, MaskAssembler};
    use std::io::Read;
    use std::net::TcpListener;

    fn header(seq: u32) -> FrameHeader {
        FrameHeader {
            seq,
            timestamp_us: 0,
            width: 32,
            height: 24,
            classes: 11,
            latency_us: 0,
        }
    }

    fn mask(seq: u32) -> Vec<u8> {
        (0..32 * 24).map(|i| ((i / 17 + seq) % 11) as u8).collect()
    }

    #[test]
    fn an_absent_consumer_loses_frames_counted_and_never_stalls_the_end() {
        // A port nobody listens on.
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let sender = Sender::start(Target::Tcp(addr));
        for seq in 0..150 {
            sender.send(encode_frame(header(seq), &mask(seq)).unwrap());
            std::thread::sleep(Duration::from_millis(2));
        }
        let started = std::time::Instant::now();
        let (sent, dropped) = sender.finish();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!((sent, dropped), (0, 150));
    }

    #[test]
    fn tcp_consumer_receives_every_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let consumer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut bytes = Vec::new();
            s.read_to_end(&mut bytes).unwrap();
            bytes
        });
        let sender = Sender::start(Target::Tcp(addr));
        for seq in 0..3 {
            sender.send(encode_frame(header(seq), &mask(seq)).unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
        let (sent, _) = sender.finish();
        assert_eq!(sent, 3);
        let bytes = consumer.join().unwrap();
        let mut decoder = Decoder::new();
        let mut out = vec![0u8; 32 * 24];
        let mut frames = Vec::new();
        {
            let mut assembler = MaskAssembler::new(&mut out);
            for b in bytes {
                if let Some(m) = decoder.push(b)
                    && let Some(h) = assembler.push(&m.unwrap()).unwrap()
                {
                    frames.push(h.seq);
                }
            }
        }
        assert_eq!(frames, [0, 1, 2]);
        assert_eq!(out, mask(2));
    }

    #[test]
    fn udp_datagrams_each_hold_one_message() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sender = Sender::start(Target::Udp(socket.local_addr().unwrap().to_string()));
        let messages = encode_frame(header(4), &mask(4)).unwrap();
        let count = messages.len();
        sender.send(messages);
        sender.finish();
        let mut out = vec![0u8; 32 * 24];
        let mut assembler = MaskAssembler::new(&mut out);
        let mut done = None;
        for _ in 0..count {
            let mut buf = [0u8; MAX_ENCODED];
            let n = socket.recv(&mut buf).unwrap();
            assert_eq!(buf[n - 1], 0, "a datagram is one framed message");
            let message = protocol::decode(&mut buf[..n - 1]).unwrap();
            done = done.or(assembler.push(&message).unwrap());
        }
        assert_eq!(done.map(|h| h.seq), Some(4));
        assert_eq!(out, mask(4));
    }

    #[test]
    fn an_absent_consumer_never_blocks_the_caller() {
        // Nothing listens on this port: sends return at once, frames are dropped.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let sender = Sender::start(Target::Tcp(port.to_string()));
        let started = std::time::Instant::now();
        for seq in 0..50 {
            sender.send(encode_frame(header(seq), &mask(seq)).unwrap());
        }
        assert!(started.elapsed() < Duration::from_millis(200));
        assert!(sender.counts().1 > 0, "frames were dropped");
    }
}
