//! The edgeseg on-board runtime.
//!
//! The core of this crate is `no_std`: it builds for bare-metal targets such as
//! `thumbv7em-none-eabihf` and holds everything that needs no operating system:
//! the label space ([`classes`]), camera frame formats and preprocessing
//! ([`frame`]), post-processing of logits into masks, overlays and runs
//! ([`post`]), class statistics ([`stats`]), the wire protocol for mask
//! consumers ([`protocol`]), embedded-hal outputs ([`outputs`]), deterministic
//! randomness ([`rng`]) and the synthetic road-scene generator ([`synth`]) that
//! serves as built-in dataset and camera.
//!
//! Features: `alloc` adds heap-backed helpers (the confusion-matrix
//! [`metrics`], the MJPEG splitter); `metadata` the model metadata reader
//! ([`model_info`]); `labels` the dataset label reader ([`labels`]); `std`
//! (default) all of them, and what needs an operating system: the tract
//! [`engine`] and atomic file writes ([`fsio`]).
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
// The label reader decodes pictures with the `image` crate, which needs std.
#[cfg(all(feature = "labels", not(feature = "std")))]
extern crate std;

pub mod classes;
#[cfg(feature = "std")]
pub mod engine;
pub mod error;
pub mod frame;
#[cfg(feature = "std")]
pub mod fsio;
#[cfg(feature = "labels")]
pub mod labels;
#[cfg(feature = "std")]
pub mod live;
#[cfg(feature = "std")]
pub mod logging;
#[cfg(feature = "alloc")]
pub mod metrics;
#[cfg(feature = "alloc")]
pub mod mjpeg;
#[cfg(feature = "metadata")]
pub mod model_info;
pub mod outputs;
#[cfg(feature = "std")]
pub mod pipeline;
pub mod post;
#[cfg(feature = "std")]
pub mod precision;
pub mod protocol;
pub mod rng;
#[cfg(feature = "std")]
pub mod segmenter;
#[cfg(feature = "std")]
pub mod sink;
pub mod size;
#[cfg(feature = "std")]
pub mod source;
pub mod stats;
pub mod synth;
#[cfg(feature = "std")]
pub mod transport;

pub use classes::{CLASS_NAMES, Class, NUM_CLASSES, PALETTE, VOID};
pub use error::Error;
pub use size::Size;
