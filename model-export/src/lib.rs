//! Export for edgeseg: a small layer graph ([`graph`]), written as ONNX with the
//! protobuf types tract ships ([`onnx`]), with the metadata a board needs
//! inside the file, and checked by running it in tract.
//!
//! This crate does not depend on Burn: `host` fills a [`Graph`] from a trained
//! model, and anything that writes ONNX made of the supported operators (PyTorch
//! included) can be read back with [`onnx::from_model`].
#![warn(missing_docs)]

pub mod error;
pub mod graph;
pub mod nnef;
pub mod onnx;
pub mod quant;

pub use error::{Error, Result};
pub use firmware::model_info::ModelInfo;
pub use firmware::{CLASS_NAMES, PALETTE};
pub use graph::{Graph, Op};

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) mod io {
    use crate::error::{Error, Result};
    use std::path::Path;

    pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
        firmware::fsio::write_atomic(path, bytes)
            .map_err(|(path, source)| Error::Io { path, source })
    }
}
