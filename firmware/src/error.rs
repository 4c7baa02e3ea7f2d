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
        }
    }
}

impl core::error::Error for Error {}
