//! Choosing the arithmetic on the board itself (`edgeseg-run --precision`).
//!
//! A bundle carries the float model and its int8 quantisation; half precision
//! is derived from the float model at load. Which is fastest depends on the
//! CPU (int8 pays only with dot-product instructions, f16 only with
//! half-precision arithmetic) and on the model, so `auto` times every
//! candidate this CPU supports on a few synthetic road scenes at start-up and
//! keeps the fastest whose masks agree with float's on at least
//! [`MIN_AGREEMENT`] of the pixels.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::Size;
use crate::engine::{Engine, EngineError, Options, Precision};
use crate::frame::PixelFormat;
use crate::segmenter::Segmenter;
use crate::source::OwnedFrame;

/// Share of pixels on which a candidate's masks must equal float's for `auto`
/// to keep it.
pub const MIN_AGREEMENT: f64 = 0.99;

/// Synthetic frames each candidate is timed on, after [`WARMUP`] runs.
pub const TRIAL_FRAMES: usize = 8;

/// Untimed runs before a candidate is timed.
pub const WARMUP: usize = 2;

/// A candidate whose first run takes longer than this many times float's
/// median is dropped after that one run (a precision the CPU has but tract
/// runs without matching kernels, such as f16 on x86, can be hundreds of
/// times slower, and timing it in full would hold up start-up for minutes).
pub const GIVE_UP_FACTOR: f64 = 3.0;

/// What the user asked for: one precision, or the fastest that agrees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Choice {
    /// Time each candidate and keep the fastest that agrees with float.
    #[default]
    Auto,
    /// This precision.
    Fixed(Precision),
}

impl std::str::FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> Result<Choice, String> {
        match s {
            "auto" => Ok(Choice::Auto),
            _ => s
                .parse()
                .map(Choice::Fixed)
                .map_err(|_| format!("unknown precision `{s}`; expected auto, f32, f16 or int8")),
        }
    }
}

/// The instruction-set features tract sees on this CPU, as tract names them
/// (`TRACT_CPU_ISA` edits them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// Every feature, e.g. `avx2`, `fma`, `avx512vnni`, `dotprod`, `fp16`.
    pub names: Vec<&'static str>,
    /// Half-precision arithmetic (ARMv8.2 `asimdhp`, AVX-512 FP16).
    pub f16_arithmetic: bool,
    /// Half-precision matrix kernels in tract for this CPU: `arm64fp16` on
    /// aarch64 with `asimdhp`. tract has none for x86's AVX-512 FP16, where an
    /// f16 model's products run in its portable scalar kernel, hundreds of
    /// times slower than f32; only this makes f16 worth trying.
    pub f16_products: bool,
    /// 8-bit dot products (ARM SDOT, x86 VNNI or AMX).
    pub int8_dot: bool,
}

impl CpuFeatures {
    /// This CPU's.
    pub fn native() -> CpuFeatures {
        use tract_linalg::isa::Isa;
        let set = tract_linalg::isa::native();
        let has = |isa: Isa| set.iter().any(|i| i == isa);
        CpuFeatures {
            names: set.iter().map(|i| i.name()).collect(),
            f16_arithmetic: has(Isa::Aarch64Fp16) || has(Isa::X86_64Avx512Fp16),
            f16_products: has(Isa::Aarch64Fp16),
            int8_dot: [
                Isa::Aarch64DotProd,
                Isa::X86_64Avx512Vnni,
                Isa::X86_64AvxVnni,
                Isa::X86_64AmxInt8,
            ]
            .into_iter()
            .any(has),
        }
    }

    /// Whether `auto` tries `precision` here.
    pub fn worth_trying(&self, precision: Precision) -> bool {
        match precision {
            Precision::F32 => true,
            Precision::F16 => self.f16_products,
            Precision::Int8 => self.int8_dot,
        }
    }
}

/// The model files of one network: its float export and its int8
/// quantisation, where present.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelFiles {
    /// Written by `edgeseg export` (also the source of f16).
    pub float: Option<PathBuf>,
    /// Written by `edgeseg quantize`.
    pub int8: Option<PathBuf>,
}

impl ModelFiles {
    /// `path` (a float or an int8 model, told apart by `int8`) and the file of
    /// the other precision beside it if there is one, named as `edgeseg demo`
    /// and the bundle name them: `model.onnx` and `model.int8.onnx`.
    pub fn around(path: &Path, int8: bool) -> ModelFiles {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let sibling = name.and_then(|n| {
            let other = match (int8, n.strip_suffix(".int8.onnx")) {
                (true, Some(stem)) => format!("{stem}.onnx"),
                (false, None) => format!("{}.int8.onnx", n.strip_suffix(".onnx")?),
                _ => return None,
            };
            Some(path.with_file_name(other)).filter(|p| p.is_file())
        });
        let given = Some(path.to_path_buf());
        if int8 {
            ModelFiles {
                float: sibling,
                int8: given,
            }
        } else {
            ModelFiles {
                float: given,
                int8: sibling,
            }
        }
    }

    /// The file `precision` loads from.
    pub fn for_precision(&self, precision: Precision) -> Option<&Path> {
        match precision {
            Precision::F32 | Precision::F16 => self.float.as_deref(),
            Precision::Int8 => self.int8.as_deref(),
        }
    }
}

/// Why no model could be chosen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// The precision asked for has no model file.
    #[error("--precision {precision}: no {kind} model; {hint}")]
    Missing {
        /// The precision asked for.
        precision: Precision,
        /// "float" or "int8".
        kind: &'static str,
        /// What to give instead.
        hint: String,
    },
    /// A candidate failed to load or run.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One candidate's showing at start-up.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    /// Its precision.
    pub precision: Precision,
    /// The file it loaded.
    pub path: PathBuf,
    /// Median inference time per frame, in milliseconds.
    pub median_ms: f64,
    /// Share of pixels whose class equals float's (1 for float itself).
    pub agreement: f64,
    /// Frames timed: [`TRIAL_FRAMES`], or 1 when the first run alone was
    /// over [`GIVE_UP_FACTOR`] times float's median.
    pub frames: usize,
}

/// The model `select` settled on and how it got there.
#[derive(Debug)]
pub struct Selection {
    /// The model, loaded and ready.
    pub segmenter: Segmenter,
    /// Every candidate timed, in the order tried (empty when nothing was timed).
    pub trials: Vec<Trial>,
    /// A line for the log: what was chosen and why.
    pub summary: String,
}

/// The index of the fastest trial whose agreement with float reaches
/// `min_agreement` (float itself always does); `None` for no trials.
pub fn choose(trials: &[Trial], min_agreement: f64) -> Option<usize> {
    trials
        .iter()
        .enumerate()
        .filter(|(_, t)| t.precision == Precision::F32 || t.agreement >= min_agreement)
        .min_by(|a, b| a.1.median_ms.total_cmp(&b.1.median_ms))
        .map(|(i, _)| i)
}

fn load(
    files: &ModelFiles,
    precision: Precision,
    options: Options,
    threads: usize,
) -> Result<Segmenter, SelectError> {
    let path = files
        .for_precision(precision)
        .ok_or_else(|| match precision {
            Precision::Int8 => SelectError::Missing {
                precision,
                kind: "int8",
                hint: "write one with `edgeseg quantize` and put it beside the float model as NAME.int8.onnx".into(),
            },
            _ => SelectError::Missing {
                precision,
                kind: "float",
                hint: "give the float model (`edgeseg export`), or put it beside the int8 one as NAME.onnx".into(),
            },
        })?;
    let options = Options {
        f16: precision == Precision::F16,
        ..options
    };
    let mut segmenter = Segmenter::new(Engine::load_with(path, options)?);
    segmenter.set_threads(threads);
    Ok(segmenter)
}

/// Loads the model for `choice` from `files`, on `threads` threads. With
/// [`Choice::Auto`] every candidate `cpu` supports runs [`WARMUP`] +
/// [`TRIAL_FRAMES`] synthetic road scenes, and the fastest whose masks agree
/// with float's on [`MIN_AGREEMENT`] of the pixels is kept.
pub fn select(
    files: &ModelFiles,
    choice: Choice,
    cpu: &CpuFeatures,
    options: Options,
    threads: usize,
) -> Result<Selection, SelectError> {
    let present = |p: Precision| files.for_precision(p).is_some();
    let candidates: Vec<Precision> = match choice {
        Choice::Fixed(p) => vec![p],
        Choice::Auto => {
            let worth: Vec<Precision> = Precision::ALL
                .into_iter()
                .filter(|&p| present(p) && cpu.worth_trying(p))
                .collect();
            if worth.is_empty() {
                // Only an int8 file, on a CPU without 8-bit dot products:
                // it is still the model there is.
                Precision::ALL
                    .into_iter()
                    .filter(|&p| present(p))
                    .take(1)
                    .collect()
            } else {
                worth
            }
        }
    };
    if let [only] = candidates[..] {
        let segmenter = load(files, only, options, threads)?;
        let summary = match choice {
            Choice::Fixed(_) => format!("precision {only} (as asked)"),
            Choice::Auto => {
                format!("precision {only} (the only candidate for this CPU and these files)")
            }
        };
        return Ok(Selection {
            segmenter,
            trials: Vec::new(),
            summary,
        });
    }
    // Candidates exist only with a float model, so float comes first and sets
    // the reference masks.
    let mut trials = Vec::new();
    let mut best: Option<(usize, Segmenter)> = None;
    let mut reference: Vec<Vec<u8>> = Vec::new();
    let mut frames: Vec<OwnedFrame> = Vec::new();
    for precision in candidates {
        let mut segmenter = load(files, precision, options, threads)?;
        if frames.is_empty() {
            frames = trial_frames(segmenter.mask_size());
        }
        let give_up_ms = trials.first().map(|f: &Trial| GIVE_UP_FACTOR * f.median_ms);
        let (median_ms, masks) = time_on(&mut segmenter, &frames, give_up_ms)?;
        let timed = masks.len();
        let agreement = if reference.is_empty() {
            reference = masks;
            1.0
        } else {
            agreement(&reference, &masks)
        };
        trials.push(Trial {
            precision,
            path: files
                .for_precision(precision)
                .unwrap_or(Path::new(""))
                .into(),
            median_ms,
            agreement,
            frames: timed,
        });
        let keep = choose(&trials, MIN_AGREEMENT) == Some(trials.len() - 1);
        if keep || best.is_none() {
            best = Some((trials.len() - 1, segmenter));
        }
    }
    let (index, segmenter) = best.expect("at least two candidates");
    let chosen = &trials[index];
    let timings: Vec<String> = trials
        .iter()
        .map(|t| {
            let agree = if t.precision == Precision::F32 {
                String::new()
            } else {
                format!(", {:.2} % of pixels as f32", 100.0 * t.agreement)
            };
            let cut = if t.frames < TRIAL_FRAMES {
                format!(" on its first run, over {GIVE_UP_FACTOR}x f32: not timed further")
            } else {
                String::new()
            };
            format!("{} {:.1} ms{cut}{agree}", t.precision, t.median_ms)
        })
        .collect();
    let summary = format!(
        "precision {} chosen (auto: {}; needs {:.0} % agreement)",
        chosen.precision,
        timings.join("; "),
        100.0 * MIN_AGREEMENT
    );
    Ok(Selection {
        segmenter,
        trials,
        summary,
    })
}

/// [`TRIAL_FRAMES`] scenes of the built-in synthetic drive, ten frames apart
/// (each drawn directly, not the frames between).
fn trial_frames(size: Size) -> Vec<OwnedFrame> {
    let drive = crate::synth::Drive::new(0);
    let (w, h) = (size.width as usize, size.height as usize);
    let mut labels = vec![0; w * h];
    (0..TRIAL_FRAMES as u64)
        .map(|i| {
            let mut frame = OwnedFrame {
                format: PixelFormat::Rgb8,
                size,
                stride: 3 * w,
                data: vec![0; 3 * w * h],
            };
            drive
                .render_frame(10 * i, w, h, &mut frame.data, &mut labels)
                .expect("buffers sized for the frame");
            frame
        })
        .collect()
}

/// Median inference milliseconds over `frames` after [`WARMUP`] runs, and the
/// masks; or, when the first run takes longer than `give_up_ms`, that run's
/// time and mask alone.
fn time_on(
    segmenter: &mut Segmenter,
    frames: &[OwnedFrame],
    give_up_ms: Option<f64>,
) -> Result<(f64, Vec<Vec<u8>>), EngineError> {
    for (i, f) in frames.iter().cycle().take(WARMUP).enumerate() {
        let started = Instant::now();
        segmenter.segment(&f.frame())?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if i == 0 && give_up_ms.is_some_and(|limit| ms > limit) {
            return Ok((ms, vec![segmenter.mask().to_vec()]));
        }
    }
    let mut times = Vec::with_capacity(frames.len());
    let mut masks = Vec::with_capacity(frames.len());
    for f in frames {
        let started = Instant::now();
        segmenter.segment(&f.frame())?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        masks.push(segmenter.mask().to_vec());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], masks))
}

/// Share of equal pixels over all masks.
fn agreement(a: &[Vec<u8>], b: &[Vec<u8>]) -> f64 {
    let (mut same, mut all) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        same += x.iter().zip(y).filter(|(p, q)| p == q).count();
        all += x.len();
    }
    same as f64 / all.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(precision: Precision, median_ms: f64, agreement: f64) -> Trial {
        Trial {
            precision,
            path: PathBuf::new(),
            median_ms,
            agreement,
            frames: TRIAL_FRAMES,
        }
    }

    #[test]
    fn the_fastest_agreeing_candidate_wins() {
        let f32 = trial(Precision::F32, 14.0, 1.0);
        // int8 faster and agreeing: int8.
        let t = [f32.clone(), trial(Precision::Int8, 8.0, 0.995)];
        assert_eq!(choose(&t, MIN_AGREEMENT), Some(1));
        // int8 faster but disagreeing: float is kept.
        let t = [f32.clone(), trial(Precision::Int8, 8.0, 0.9)];
        assert_eq!(choose(&t, MIN_AGREEMENT), Some(0));
        // int8 agreeing but slower: float is kept.
        let t = [f32.clone(), trial(Precision::Int8, 17.0, 1.0)];
        assert_eq!(choose(&t, MIN_AGREEMENT), Some(0));
        // Three candidates: the fastest agreeing one.
        let t = [
            f32,
            trial(Precision::F16, 10.0, 0.999),
            trial(Precision::Int8, 9.0, 0.98),
        ];
        assert_eq!(choose(&t, MIN_AGREEMENT), Some(1));
        assert_eq!(choose(&[], MIN_AGREEMENT), None);
    }

    #[test]
    fn an_int8_file_alone_runs_even_without_dot_products() {
        let dir = tempfile::tempdir().unwrap();
        let int8 = dir.path().join("m.int8.onnx");
        std::fs::write(&int8, b"not a model").unwrap();
        let files = ModelFiles::around(&int8, true);
        let cpu = CpuFeatures {
            names: Vec::new(),
            f16_arithmetic: false,
            f16_products: false,
            int8_dot: false,
        };
        // The int8 file is the one candidate: loading it is what fails here.
        let err = select(&files, Choice::Auto, &cpu, Options::default(), 1).unwrap_err();
        assert!(err.to_string().contains("m.int8.onnx"), "{err}");
    }

    #[test]
    fn precisions_parse() {
        assert_eq!("auto".parse(), Ok(Choice::Auto));
        assert_eq!("int8".parse(), Ok(Choice::Fixed(Precision::Int8)));
        assert_eq!("f16".parse(), Ok(Choice::Fixed(Precision::F16)));
        assert!(
            "fp64"
                .parse::<Choice>()
                .unwrap_err()
                .contains("auto, f32, f16 or int8")
        );
    }

    #[test]
    fn the_other_precision_is_found_beside_the_given_file() {
        let dir = tempfile::tempdir().unwrap();
        let float = dir.path().join("model.onnx");
        let int8 = dir.path().join("model.int8.onnx");
        std::fs::write(&float, b"").unwrap();
        // Alone: only the given file.
        let files = ModelFiles::around(&float, false);
        assert_eq!(files.int8, None);
        std::fs::write(&int8, b"").unwrap();
        let files = ModelFiles::around(&float, false);
        assert_eq!(files.int8.as_deref(), Some(int8.as_path()));
        assert_eq!(files.for_precision(Precision::F16), Some(float.as_path()));
        let files = ModelFiles::around(&int8, true);
        assert_eq!(files.float.as_deref(), Some(float.as_path()));
        // Another naming: no sibling is guessed.
        let other = dir.path().join("street.onnx");
        assert_eq!(ModelFiles::around(&other, false).int8, None);
    }
}
