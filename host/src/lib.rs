//! The edgeseg workstation side: datasets, training and evaluation of U-Net and
//! LinkNet with Burn, and the `edgeseg` command line.
//!
//! - [`synth`] writes the built-in synthetic road scenes as a CamVid-layout dataset.
//! - [`io`] writes files atomically (temporary file, then rename).
#![warn(missing_docs)]

pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod inference;
pub mod io;
pub mod labels;
pub mod loss;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod predict;
pub mod progress;
pub mod quantize;
pub mod run;
pub mod synth;
pub mod train;

pub use error::Error;
