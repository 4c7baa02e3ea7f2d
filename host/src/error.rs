//! The error type of the host library; every variant names the file or value at fault.

use std::path::PathBuf;

/// What went wrong, with the path or value that was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file or folder failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Encoding or decoding an image failed.
    #[error("{}: {source}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The codec's error.
        source: image::ImageError,
    },
    /// The synthetic generator refused its arguments.
    #[error("synthetic scene: {0}")]
    Synth(#[from] firmware::Error),
    /// An argument outside what the operation accepts.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with the host [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
