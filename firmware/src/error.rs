//! The error type of the no_std core.

use core::fmt;

/// What can go wrong in the core; every variant says what was wrong.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A frame with zero width or height.
    ZeroSize,
    /// A buffer whose length does not fit the frame it should hold.
    BufferSize {
        /// Bytes (or elements) the frame needs.
        expected: usize,
        /// Bytes (or elements) given.
        actual: usize,
    },
    /// A class count outside 1..=256 (masks hold one byte per pixel).
    Classes {
        /// The count given.
        classes: usize,
    },
    /// Run-length data that does not fill its mask exactly.
    BadRuns {
        /// Pixels filled before the runs ended or overflowed.
        filled: usize,
        /// Pixels in the mask.
        expected: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ZeroSize => f.write_str("frame has zero width or height"),
            Error::BufferSize { expected, actual } => {
                write!(
                    f,
                    "buffer holds {actual} elements, the frame needs {expected}"
                )
            }
            Error::Classes { classes } => {
                write!(f, "{classes} classes: masks hold 1 to 256 classes")
            }
            Error::BadRuns { filled, expected } => write!(
                f,
                "run-length data fills {filled} of {expected} pixels, or a run is empty or overflows"
            ),
        }
    }
}

impl core::error::Error for Error {}

/// `error: cause: cause ...` on one line, leaving out a cause whose text the
/// message already holds (errors that print their source and also return it
/// from `source()` would otherwise say it twice).
#[cfg(feature = "alloc")]
pub fn chain_message(error: &(dyn core::error::Error + 'static)) -> alloc::string::String {
    use alloc::string::ToString;
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            out += ": ";
            out += &text;
        }
        cause = e.source();
    }
    out
}

#[cfg(all(test, feature = "std"))]
mod tests {
    #[test]
    fn causes_are_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = crate::source::SourceError::Io {
            what: "/dev/video0".into(),
            source: io,
        };
        let wrapped = anyhow::Error::new(e).context("opening the camera");
        let line = super::chain_message(wrapped.as_ref());
        assert_eq!(line, "opening the camera: /dev/video0: entity not found");
    }
}
