//! The wire-protocol decoder and mask assembler on arbitrary bytes, as a
//! consumer on a serial line or TCP socket receives them: no input may panic,
//! hang or write outside the mask, and every frame the assembler completes
//! fits the mask it was given.

use firmware::protocol::{Decoder, MaskAssembler};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // The first byte picks the consumer's mask size, as a receiver
        // configured for another model would be.
        let Some((&size, stream)) = data.split_first() else {
            return;
        };
        let mut mask = vec![0u8; usize::from(size) * 37];
        let mut decoder = Decoder::new();
        let mut assembler = MaskAssembler::new(&mut mask);
        for &byte in stream {
            if let Some(Ok(message)) = decoder.push(byte)
                && let Ok(Some(header)) = assembler.push(&message)
            {
                let pixels = usize::from(header.width) * usize::from(header.height);
                assert!(pixels <= assembler.mask().len(), "{header:?}");
            }
        }
    });
}
