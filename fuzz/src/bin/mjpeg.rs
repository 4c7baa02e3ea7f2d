//! The MJPEG splitter on arbitrary bytes in arbitrary read sizes, as a camera
//! pipe delivers them: no input may panic or hang, every picture it returns
//! starts with a start of image and ends with an end of image, it never holds
//! more than its limit plus one read, and it accounts for every byte.

use firmware::mjpeg::{MAX_JPEG_BYTES, Splitter};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // The first byte sets the read size (1..=256 bytes at a time).
        let Some((&read, stream)) = data.split_first() else {
            return;
        };
        let mut splitter = Splitter::default();
        let mut out = 0usize;
        for chunk in stream.chunks(usize::from(read) + 1) {
            splitter.push(chunk);
            assert!(splitter.held() <= MAX_JPEG_BYTES + chunk.len());
            while let Some(picture) = splitter.next_jpeg() {
                assert!(picture.starts_with(&[0xFF, 0xD8]) && picture.ends_with(&[0xFF, 0xD9]));
                out += picture.len();
            }
        }
        let left = splitter.finish();
        // Bytes are returned, skipped, or held at the end; broken pictures'
        // bytes are dropped (counted as corrupt), so at most the stream.
        assert!(out + left + splitter.skipped_bytes as usize <= stream.len());
    });
}
