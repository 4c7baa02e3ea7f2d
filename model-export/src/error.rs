//! The error type of `model-export`; every variant names the file, node or value at fault.

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A graph that does not hold together (shapes, names, arity).
    #[error("graph: {0}")]
    Graph(String),
    /// An ONNX file or node this crate cannot read or that tract rejects.
    #[error("{what}: {message}")]
    Onnx {
        /// The file, node or value.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// Running a model failed.
    #[error(transparent)]
    Engine(#[from] firmware::engine::EngineError),
    /// Model metadata that is missing or malformed.
    #[error(transparent)]
    Metadata(#[from] firmware::model_info::MetadataError),
    /// Calibration or verification data that cannot be used.
    #[error("{0}")]
    Data(String),
    /// An option given as text that does not parse.
    #[error("expected {expected}, got {given:?}")]
    Parse {
        /// What would have been accepted.
        expected: &'static str,
        /// The text given.
        given: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
