//! edgeseg integration tests: one binary, one module per area.

mod e2e;
mod export;
mod readme;
mod synth;
