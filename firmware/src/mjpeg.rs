//! Splitting an MJPEG byte stream (JPEG pictures back to back, as
//! `rpicam-vid --codec mjpeg -o -` writes) into pictures, robustly: it walks
//! each picture's markers, so a picture cut short by the start of the next
//! (a camera restarted mid-frame) is dropped and counted without hiding the
//! next one, markers inside segments (an EXIF thumbnail) do not split a
//! picture, bytes between pictures are skipped, and a picture longer than
//! [`MAX_JPEG_BYTES`] is dropped, so no input can make it hold more than that
//! plus one read. Each byte is scanned once. Needs only an allocator, so the
//! fuzz target runs it without the runtime.

use alloc::vec::Vec;

/// Feeds bytes in, takes whole pictures out.
#[derive(Debug, Default)]
pub struct Splitter {
    pending: Vec<u8>,
    /// The walk through the picture at the start of `pending`, if one started.
    scan: Option<JpegScan>,
    /// Pictures dropped as broken or too long.
    pub corrupt: u64,
    /// Bytes between pictures that belong to none.
    pub skipped_bytes: u64,
}

impl Splitter {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Bytes held (at most [`MAX_JPEG_BYTES`] plus the last push).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// The next whole picture (start to end of image), or `None` until more
    /// bytes are pushed.
    pub fn next_jpeg(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.scan.is_none() {
                // Look for a start of image; keep a trailing 0xFF, which may
                // be the first half of one.
                match find(&self.pending, &[0xFF, 0xD8]) {
                    Some(start) => {
                        self.skip(start);
                        self.scan = Some(JpegScan::new());
                    }
                    None => {
                        let keep = usize::from(self.pending.last() == Some(&0xFF));
                        self.skip(self.pending.len() - keep);
                        return None;
                    }
                }
            }
            let scan = self.scan.as_mut().expect("a scan started above");
            match scan.advance(&self.pending) {
                Scan::Complete(end) => {
                    let jpeg = self.pending[..end].to_vec();
                    self.pending.drain(..end);
                    self.scan = None;
                    return Some(jpeg);
                }
                Scan::Broken => {
                    // Resynchronise at the next start of image after this
                    // one's (a cut-short picture's lengths may point past it).
                    self.corrupt += 1;
                    let resume = find(&self.pending[2..], &[0xFF, 0xD8])
                        .map_or(self.pending.len(), |at| 2 + at);
                    self.pending.drain(..resume);
                    self.scan = None;
                }
                Scan::More if self.pending.len() > MAX_JPEG_BYTES => {
                    self.corrupt += 1;
                    self.pending.drain(..2);
                    self.scan = None;
                }
                Scan::More => return None,
            }
        }
    }

    /// The stream ended: drops what is held (an incomplete last picture) and
    /// returns how many bytes that was.
    pub fn finish(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        self.scan = None;
        n
    }

    fn skip(&mut self, n: usize) {
        self.skipped_bytes += n as u64;
        self.pending.drain(..n);
    }
}

/// Largest JPEG picture an MJPEG stream may carry (a 4K frame at high quality
/// is about 4 MB); a longer one is skipped as corrupt, so input without end
/// markers cannot exhaust memory.
pub const MAX_JPEG_BYTES: usize = 32 << 20;

/// Where the walk through one JPEG stands.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// The picture ends before this offset (after its end of image).
    Complete(usize),
    /// The picture is broken (a marker where none may be, or none where one
    /// must be).
    Broken,
    /// More bytes are needed.
    More,
}

/// Walks a JPEG from its start of image at offset 0 through its marker
/// segments (skipped by their length, so an embedded thumbnail's markers do
/// not count) and its entropy-coded data, resuming where the last call
/// stopped, so each byte is looked at once.
#[derive(Debug)]
struct JpegScan {
    /// Offset of the next marker, or of the next byte of entropy-coded data.
    at: usize,
    /// Whether `at` is inside entropy-coded data (after a start of scan).
    entropy: bool,
}

impl JpegScan {
    fn new() -> JpegScan {
        JpegScan {
            at: 2,
            entropy: false,
        }
    }

    fn advance(&mut self, buf: &[u8]) -> Scan {
        loop {
            if self.entropy {
                // Entropy-coded data ends at a marker other than a stuffed
                // 0xFF00, a restart marker or fill bytes.
                let Some(off) = buf[self.at.min(buf.len())..]
                    .iter()
                    .position(|&b| b == 0xFF)
                else {
                    self.at = buf.len();
                    return Scan::More;
                };
                self.at += off;
                let Some(&next) = buf.get(self.at + 1) else {
                    return Scan::More;
                };
                match next {
                    0x00 | 0xD0..=0xD7 => {
                        self.at += 2;
                        continue;
                    }
                    0xFF => {
                        self.at += 1;
                        continue;
                    }
                    _ => self.entropy = false,
                }
            }
            let (Some(&ff), Some(&marker)) = (buf.get(self.at), buf.get(self.at + 1)) else {
                return Scan::More;
            };
            if ff != 0xFF {
                // A segment's length led somewhere that is not a marker.
                return Scan::Broken;
            }
            match marker {
                0xFF => self.at += 1,
                0xD9 => return Scan::Complete(self.at + 2),
                0xD8 => return Scan::Broken,
                0x01 | 0xD0..=0xD7 => self.at += 2,
                _ => {
                    let Some(len) = buf.get(self.at + 2..self.at + 4) else {
                        return Scan::More;
                    };
                    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                    if len < 2 {
                        return Scan::Broken;
                    }
                    if marker == 0xDA {
                        // The scan header, then entropy-coded data. A new
                        // picture that starts inside the header is caught by
                        // the marker check after it.
                        self.entropy = true;
                    }
                    // Skip the payload (which may hold a thumbnail's markers).
                    self.at += 2 + len;
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
