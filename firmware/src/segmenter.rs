//! Frame in, class mask out: preprocessing, tract inference and argmax around
//! one loaded model, with the buffers reused from frame to frame.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::Size;
use crate::engine::{Engine, EngineError};
use crate::frame::{Frame, Normalization, Preprocessor};
use crate::model_info::ModelInfo;
use crate::post::argmax;

/// The default thread count for inference: one per core but one, left to
/// capture and output (at least 1). BENCHMARKS.md has the measurements.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Time spent in each stage of the last [`Segmenter::segment`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    /// Resize, colour conversion and normalisation.
    pub preprocess: Duration,
    /// The network in tract (both runs with [`Segmenter::set_flip`]).
    pub inference: Duration,
    /// Argmax into the class mask.
    pub postprocess: Duration,
}

/// A loaded model that segments frames of any format and size.
#[derive(Debug)]
pub struct Segmenter {
    engine: Engine,
    norm: Normalization,
    preprocessor: Preprocessor,
    input: Vec<f32>,
    mask: Vec<u8>,
    times: StageTimes,
    /// Test-time flip averaging ([`Segmenter::set_flip`]).
    flip: bool,
    /// With `flip`: the mirrored input, and the summed scores.
    mirrored: Vec<f32>,
    scores: Vec<f32>,
}

impl Segmenter {
    /// Loads an ONNX file written by `edgeseg export` or `edgeseg quantize`; its
    /// metadata sets the input size, normalisation and classes.
    pub fn load(path: &Path) -> Result<Segmenter, EngineError> {
        Ok(Segmenter::new(Engine::load(path)?))
    }

    /// Wraps a loaded engine.
    pub fn new(engine: Engine) -> Segmenter {
        let info = engine.info();
        let area = info.input_size.area();
        Segmenter {
            norm: Normalization {
                mean: info.mean,
                std: info.std,
            },
            preprocessor: Preprocessor::new(),
            input: vec![0.0; 3 * area],
            mask: vec![0; area],
            times: StageTimes::default(),
            flip: false,
            mirrored: Vec::new(),
            scores: Vec::new(),
            engine,
        }
    }

    /// A second segmenter for the same model (see [`Engine::fork`]), with its
    /// own buffers and the same settings: two can segment two frames at once.
    pub fn fork(&self) -> Result<Segmenter, EngineError> {
        let mut fork = Segmenter::new(self.engine.fork()?);
        fork.set_flip(self.flip);
        Ok(fork)
    }

    /// Test-time flip averaging: each frame's class scores are summed with
    /// those of its mirror image (mirrored back) before the argmax, as
    /// `edgeseg eval --tta flip` scores a model. Twice the inference time;
    /// on CamVid's held-out drives about a point of mIoU (BENCHMARKS.md).
    /// The masks are then exactly mirror-symmetric: a mirrored frame gives
    /// the mirrored mask.
    pub fn set_flip(&mut self, on: bool) {
        self.flip = on;
    }

    /// Whether test-time flip averaging is on.
    pub fn flip(&self) -> bool {
        self.flip
    }

    /// Runs inference on `threads` threads (see [`Engine::set_threads`]).
    pub fn set_threads(&mut self, threads: usize) {
        self.engine.set_threads(threads);
    }

    /// The engine running the model.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The model's metadata.
    pub fn info(&self) -> &ModelInfo {
        self.engine.info()
    }

    /// The size of the masks [`Segmenter::segment`] returns (the model's input size).
    pub fn mask_size(&self) -> Size {
        self.engine.info().input_size
    }

    /// Stage times of the last frame.
    pub fn times(&self) -> StageTimes {
        self.times
    }

    /// The class mask of the last frame segmented, at [`Segmenter::mask_size`].
    pub fn mask(&self) -> &[u8] {
        &self.mask
    }

    /// tract's per-node times for one more run of the last frame's input,
    /// slowest first (see [`Engine::profile`]).
    pub fn profile_last(&mut self) -> Result<Vec<(String, String, f64)>, EngineError> {
        self.engine.profile(&self.input)
    }

    /// Segments `frame`; the result is in [`Segmenter::mask`].
    pub fn segment(&mut self, frame: &Frame<'_>) -> Result<(), EngineError> {
        let started = Instant::now();
        let size = self.mask_size();
        self.preprocessor
            .run(frame, size, &self.norm, &mut self.input)
            .map_err(|e| EngineError::Model {
                what: "preprocessing".into(),
                message: e.to_string(),
            })?;
        let preprocessed = Instant::now();
        let classes = self.engine.info().num_classes();
        let logits = self.engine.run(&self.input)?;
        let logits = if self.flip {
            // f(x) + m(f(m(x))), summed in this order as the host does.
            self.scores.clear();
            self.scores.extend_from_slice(logits);
            self.mirrored.resize(self.input.len(), 0.0);
            mirror_rows(&self.input, size.width as usize, &mut self.mirrored);
            let mirrored = self.engine.run(&self.mirrored)?;
            add_mirrored(&mut self.scores, mirrored, size.width as usize);
            &self.scores
        } else {
            logits
        };
        let inferred = Instant::now();
        argmax(logits, classes, &mut self.mask).map_err(|e| EngineError::Model {
            what: "the logits".into(),
            message: e.to_string(),
        })?;
        self.times = StageTimes {
            preprocess: preprocessed - started,
            inference: inferred - preprocessed,
            postprocess: inferred.elapsed(),
        };
        Ok(())
    }
}

/// `dst` is `src` with each row of `w` values reversed.
fn mirror_rows(src: &[f32], w: usize, dst: &mut [f32]) {
    for (to, from) in dst.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
        for (t, f) in to.iter_mut().zip(from.iter().rev()) {
            *t = *f;
        }
    }
}

/// Adds to each row of `sum` (rows of `w` values) the reversed row of
/// `mirrored`.
fn add_mirrored(sum: &mut [f32], mirrored: &[f32], w: usize) {
    for (to, from) in sum.chunks_exact_mut(w).zip(mirrored.chunks_exact(w)) {
        for (t, f) in to.iter_mut().zip(from.iter().rev()) {
            *t += *f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_mirrored_and_mirrored_rows_added() {
        let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut dst = [0.0; 6];
        mirror_rows(&src, 3, &mut dst);
        assert_eq!(dst, [3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
        let mut sum = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0];
        add_mirrored(&mut sum, &src, 3);
        assert_eq!(sum, [13.0, 22.0, 31.0, 46.0, 55.0, 64.0]);
    }
}
