//! edgeseg model export: ONNX writing, int8 quantisation for tract, verification.
//!
//! This crate is filled in by the export issue; for now it only re-exports the
//! label space that every exported model carries.
#![warn(missing_docs)]

pub use firmware::{CLASS_NAMES, PALETTE};
