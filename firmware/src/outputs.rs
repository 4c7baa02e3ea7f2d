//! Outputs through embedded-hal 1.0 and embedded-io traits, so the same code
//! drives a GPIO line and a UART on a board and a mock in tests.

use embedded_hal::digital::OutputPin;
use embedded_io::Write;

use crate::protocol::{self, FrameHeader, MAX_ENCODED, ProtocolError};

/// A status LED: toggles once per processed frame (a steady blink while the
/// pipeline runs), and on an error lights steadily for `error_hold` frames.
#[derive(Debug)]
pub struct StatusLed<P> {
    pin: P,
    lit: bool,
    error_frames: u32,
    error_hold: u32,
}

impl<P: OutputPin> StatusLed<P> {
    /// Drives `pin` (high = lit), starting dark.
    pub fn new(mut pin: P, error_hold: u32) -> Result<StatusLed<P>, P::Error> {
        pin.set_low()?;
        Ok(StatusLed {
            pin,
            lit: false,
            error_frames: 0,
            error_hold,
        })
    }

    /// A frame was processed.
    pub fn frame(&mut self) -> Result<(), P::Error> {
        if self.error_frames > 0 {
            self.error_frames -= 1;
            return self.set(true);
        }
        self.set(!self.lit)
    }

    /// Something failed: light steadily for a while.
    pub fn error(&mut self) -> Result<(), P::Error> {
        self.error_frames = self.error_hold;
        self.set(true)
    }

    /// Whether the LED is lit.
    pub fn is_lit(&self) -> bool {
        self.lit
    }

    /// Gives the pin back.
    pub fn release(self) -> P {
        self.pin
    }

    fn set(&mut self, lit: bool) -> Result<(), P::Error> {
        self.lit = lit;
        if lit {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        }
    }
}

/// Why a mask summary could not be written.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The writer failed.
    Io(E),
    /// A message did not fit the protocol's buffer.
    Protocol(ProtocolError),
}

/// Writes the protocol messages of one frame (header, class summary, run-length
/// mask, end) to `out`, such as a UART; returns the bytes written.
pub fn write_frame<W: Write>(
    out: &mut W,
    header: FrameHeader,
    mask: &[u8],
) -> Result<usize, WriteError<W::Error>> {
    let mut buf = [0u8; MAX_ENCODED];
    let mut written = 0;
    for message in protocol::frame_messages(header, mask) {
        let n = protocol::encode(&message, &mut buf).map_err(WriteError::Protocol)?;
        out.write_all(&buf[..n]).map_err(WriteError::Io)?;
        written += n;
    }
    out.flush().map_err(WriteError::Io)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Decoder, MaskAssembler};
    use core::convert::Infallible;

    extern crate std;
    use std::vec::Vec;

    /// A pin that records every level it is set to.
    #[derive(Default)]
    struct MockPin(Vec<bool>);

    impl embedded_hal::digital::ErrorType for MockPin {
        type Error = Infallible;
    }

    impl OutputPin for MockPin {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.0.push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.0.push(true);
            Ok(())
        }
    }

    /// A UART that accepts at most 7 bytes per write, like a small FIFO.
    #[derive(Default)]
    struct MockUart(Vec<u8>);

    impl embedded_io::ErrorType for MockUart {
        type Error = Infallible;
    }

    impl Write for MockUart {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    #[test]
    fn led_blinks_per_frame_and_holds_on_error() {
        let mut led = StatusLed::new(MockPin::default(), 2).unwrap();
        for _ in 0..3 {
            led.frame().unwrap();
        }
        led.error().unwrap();
        led.frame().unwrap();
        led.frame().unwrap();
        led.frame().unwrap();
        let levels = led.release().0;
        assert_eq!(
            levels,
            [false, true, false, true, true, true, true, false],
            "dark, three toggles, error, held for two frames, blinking again"
        );
    }

    #[test]
    fn frames_written_to_a_uart_decode_back() {
        let (w, h) = (40u16, 30u16);
        let mask: Vec<u8> = (0..w as u32 * h as u32)
            .map(|i| ((i / 13) % 11) as u8)
            .collect();
        let header = FrameHeader {
            seq: 9,
            timestamp_us: 5,
            width: w,
            height: h,
            classes: 11,
            latency_us: 1,
        };
        let mut uart = MockUart::default();
        let n = write_frame(&mut uart, header, &mask).unwrap();
        assert_eq!(n, uart.0.len());
        let mut decoder = Decoder::new();
        let mut out = [0u8; 1200];
        let mut assembler = MaskAssembler::new(&mut out);
        let mut complete = None;
        for &b in &uart.0 {
            if let Some(m) = decoder.push(b) {
                complete = complete.or(assembler.push(&m.unwrap()).unwrap());
            }
        }
        assert_eq!(complete, Some(header));
        assert_eq!(&out[..], &mask[..]);
    }
}
