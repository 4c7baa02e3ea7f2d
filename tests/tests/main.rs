//! edgeseg integration tests: one binary, one module per area.

mod export;
mod synth;
