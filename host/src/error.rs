//! The error type of the host library; every variant names the file or value at fault.

use std::path::PathBuf;

/// What went wrong, with the path or value that was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file or folder failed (the cause is the error's source).
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Encoding or decoding an image failed (the cause is the error's source).
    #[error("{}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The codec's error.
        source: image::ImageError,
    },
    /// A dataset split folder that is missing or holds no images.
    #[error("{}: {what}", dir.display())]
    Split {
        /// The folder.
        dir: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// An image with no label file.
    #[error("{}: no label file; expected {}", image.display(), expected.display())]
    MissingMask {
        /// The image.
        image: PathBuf,
        /// Where its label was looked for.
        expected: PathBuf,
    },
    /// A label file or class list that does not fit its image or the label
    /// space.
    #[error("{}: {source}", path.display())]
    Labels {
        /// The label file or `class_dict.csv`.
        path: PathBuf,
        /// What is wrong with it.
        source: firmware::labels::LabelError,
    },
    /// A file that is not what the operation needs (checkpoint, config, ...).
    #[error("{}: {what}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// An exported file whose masks in tract differ from Burn's.
    #[error(
        "tract agrees with Burn on only {:.3}% of pixels; the export is wrong",
        100.0 * agreement
    )]
    Disagreement {
        /// Share of pixels on which the masks agreed.
        agreement: f64,
    },
    /// The synthetic generator refused its arguments.
    #[error("synthetic scene: {0}")]
    Synth(#[from] firmware::Error),
    /// A model file that cannot be decoded, converted or quantised (the cause
    /// is the error's source).
    #[error("{}", path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        source: model_export::Error,
    },
    /// Building, checking or writing an exported model failed.
    #[error(transparent)]
    Export(#[from] model_export::Error),
    /// The on-board engine could not load or run a model.
    #[error(transparent)]
    Engine(#[from] firmware::engine::EngineError),
    /// `--precision` could not be settled.
    #[error(transparent)]
    Precision(#[from] firmware::precision::SelectError),
    /// A frame source of the on-board runtime could not be opened or read.
    #[error(transparent)]
    Source(#[from] firmware::source::SourceError),
    /// An output of the on-board runtime could not be opened or written.
    #[error(transparent)]
    Sink(#[from] firmware::sink::SinkError),
    /// A setting given as text that does not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A training device this build or machine cannot give.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// An argument outside what the operation accepts.
    #[error("{0}")]
    Invalid(String),
}

/// A setting given as text (a command-line value) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {given:?}")]
pub struct ParseError {
    /// What would have been accepted.
    pub expected: &'static str,
    /// The text given.
    pub given: String,
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
