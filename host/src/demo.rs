//! `edgeseg demo`: the whole product in one command. Synthetic road scenes (or a
//! real dataset) to a trained LinkNet, float, int8 and NNEF models, a drive
//! streamed through the runtime's pipeline, and a report with the numbers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firmware::Size;
use firmware::engine::Options;
use firmware::precision::{Choice, CpuFeatures, ModelFiles};
use firmware::segmenter::Segmenter;
use firmware::sink::{self, STAGES, Sink, StreamOptions, StreamSummary};
use serde::Serialize;

use crate::config::TrainConfig;
use crate::data::{DataSpec, Source};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::ModelConfig;
use crate::quantize::{QuantReport, QuantizeJob};
use crate::run::{RunDir, Start};

/// What the demo does and where it writes.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Output folder.
    pub out: PathBuf,
    /// A dataset in the CamVid layout; synthetic scenes when `None`.
    pub data: Option<PathBuf>,
    /// Training budget in minutes.
    pub train_minutes: f64,
    /// Model input size.
    pub size: Size,
    /// Synthetic training and validation scenes.
    pub scenes: (usize, usize),
    /// Frames of the drive streamed at the end.
    pub frames: u64,
    /// Size of the drive's camera frames.
    pub camera: Size,
    /// Seed of everything random.
    pub seed: u64,
    /// Hide progress bars.
    pub quiet: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: PathBuf::from("demo-out"),
            data: None,
            train_minutes: 7.0,
            size: Size::new(256, 192),
            scenes: (400, 50),
            frames: 240,
            camera: Size::new(640, 480),
            seed: 0,
            quiet: false,
        }
    }
}

/// The numbers the demo measured; written as `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// The data trained on.
    pub data: String,
    /// Architecture and input size.
    pub model: String,
    /// Training epochs completed.
    pub epochs: usize,
    /// Training wall time, seconds.
    pub train_seconds: f64,
    /// Best validation mIoU during training (Burn).
    pub miou_train_best: f64,
    /// Validation mIoU of the float ONNX model in tract.
    pub miou_float: f64,
    /// Validation mIoU of the int8 ONNX model in tract.
    pub miou_int8: f64,
    /// Validation pixel accuracy of the float and int8 models.
    pub pixel_accuracy: [f64; 2],
    /// Share of validation pixels where float and int8 agree.
    pub int8_agreement: f64,
    /// Per-class validation IoU of the float model (class name, IoU).
    pub per_class_iou: Vec<(String, Option<f64>)>,
    /// Size of `model.onnx` in bytes.
    pub model_bytes_float: u64,
    /// Size of `model.int8.onnx` in bytes.
    pub model_bytes_int8: u64,
    /// Size of `model.nnef.tgz` in bytes.
    pub model_bytes_nnef: u64,
    /// Multiply-accumulates per frame.
    pub macs: u64,
    /// tract latency of the float and int8 models on one frame, ms (median).
    pub tract_ms: [f64; 2],
    /// `edgeseg-run --precision auto` on this machine: each candidate's
    /// median inference time and agreement with f32 on synthetic scenes.
    pub precision_trials: Vec<PrecisionTrial>,
    /// The precision `auto` picked here.
    pub precision_auto: String,
    /// Frames streamed through the pipeline.
    pub frames: u64,
    /// Pipeline frames per second over the drive.
    pub fps: f64,
    /// Mean per-stage latency over the drive, ms (capture, preprocess,
    /// inference, postprocess, output, total).
    pub latency_ms: serde_json::Map<String, serde_json::Value>,
    /// Which model the drive ran.
    pub stream_model: String,
    /// Total demo wall time, seconds.
    pub seconds: f64,
}

/// One precision as `edgeseg-run --precision auto` timed it.
#[derive(Clone, Debug, Serialize)]
pub struct PrecisionTrial {
    /// `f32`, `f16` or `int8`.
    pub precision: String,
    /// Median inference time per frame, ms.
    pub median_ms: f64,
    /// Share of pixels whose class equals f32's.
    pub agreement: f64,
}

/// Files the demo wrote, relative to its output folder.
pub const OUTPUTS: [&str; 10] = [
    "model.onnx",
    "model.int8.onnx",
    "model.nnef.tgz",
    "curves.png",
    "grid.png",
    "drive/",
    "drive.gif",
    "frames.jsonl",
    "report.md",
    "report.json",
];

const SYNTHETIC: &str = "synthetic road scenes";

fn sink(spec: String) -> Result<Sink> {
    // The demo's folder is its own: a second demo replaces the first's outputs.
    Ok(Sink::open_replacing(&spec)?)
}

/// Runs the whole demo, calling `log` with a line per step.
pub fn run(options: &DemoOptions, mut log: impl FnMut(&str)) -> Result<DemoReport> {
    let started = Instant::now();
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let size = options.size;

    // 1. Data.
    let data_root = match &options.data {
        Some(root) => {
            log(&format!("[1/5] data: {}", root.display()));
            root.clone()
        }
        None => {
            let root = out.join("data");
            let (train, val) = options.scenes;
            log(&format!(
                "[1/5] data: {train} training and {val} validation synthetic road scenes at {size} in {}",
                root.display()
            ));
            let spec = crate::synth::SynthSpec {
                train,
                val,
                size,
                seed: options.seed,
            };
            crate::synth::write_dataset(&root, &spec, &|| {})?;
            root
        }
    };

    // 2. Training: LinkNet-18 at half width gave the best mIoU per minute here,
    // with the stem skip for thin objects (BENCHMARKS.md, synth-ad against synth-y).
    let data = DataSpec {
        root: Some(data_root.clone()),
        val_fraction: 0.2,
        synthetic_train: 0,
        synthetic_val: 0,
        seed: options.seed,
        val_sequences: Vec::new(),
        train_on_val: false,
    };
    let labels = Source::open(&data, "train", size)?.labels();
    let model = ModelConfig::linknet(labels.num_classes(), 18, 0.5).with_stem_skip(true);
    let mut config = TrainConfig::new(model, size);
    config.data = data.clone();
    config.labels = labels;
    config.epochs = None;
    config.lr = 4e-3;
    config.loss = "ce+1.0*dice".parse()?;
    // Square-root median-frequency weights scored 0.504 against 0.463 without
    // weights in 10 minutes on synthetic scenes (BENCHMARKS.md, synth-h and synth-c).
    config.class_weights = crate::config::ClassWeights::SqrtMedian;
    // Synthetic scenes already vary lighting, camera and layout; augmenting them
    // on top only slowed learning (0.604 without against 0.504 with, synth-k and
    // synth-h). Real pictures keep the augmentation.
    if options.data.is_none() {
        config.augment = None;
    }
    // The first 30 % of the budget at half size: 0.678 against 0.659 in 10
    // minutes on synthetic scenes (synth-y, synth-r), part of CamVid's 57.8.
    config.progressive = 0.3;
    config.time_limit = Some(options.train_minutes * 60.0);
    config.seed = options.seed;
    log(&format!(
        "[2/5] training {} at {size} for {:.1} minutes (batch {}, lr {}, ce+dice, sqrt-median class weights, progressive resizing, {})",
        config.model.name(),
        options.train_minutes,
        config.batch,
        config.lr,
        if config.augment.is_some() {
            "augmented"
        } else {
            "no augmentation"
        }
    ));
    // A demo run again replaces its own run's files (never a folder holding
    // anything else, see `Start::Overwrite`).
    let run_dir = RunDir::new(out.join("run"));
    let train_started = Instant::now();
    let summary =
        crate::train::train(&config, &run_dir, Start::Overwrite, options.quiet, |line| {
            log(&format!("      {line}"))
        })?;
    let train_seconds = train_started.elapsed().as_secs_f64();
    copy(&run_dir.path.join("curves.png"), &out.join("curves.png"))?;
    let predictor = crate::predict::Predictor::from_run(&run_dir, "best.bpk")?;
    let val = Source::open(&data, "val", size)?;
    crate::predict::write_grid(&predictor, &val, 6, &out.join("grid.png"))?;

    // 3. Export and quantise.
    let float_path = out.join("model.onnx");
    let int8_path = out.join("model.int8.onnx");
    let nnef_path = out.join("model.nnef.tgz");
    log("[3/5] exporting model.onnx, model.nnef.tgz and model.int8.onnx");
    let export = crate::export::export_run(&run_dir, "best.bpk", None, &float_path, 4)?;
    export.agreement.check()?;
    let nnef_bytes = model_export::nnef::write_nnef(&float_path, &nnef_path)?;
    let quant = crate::quantize::quantize_file(&QuantizeJob {
        model: float_path.clone(),
        calib: data_root.clone(),
        calib_images: 24,
        out: int8_path.clone(),
        options: Default::default(),
        data: Some(data_root.clone()),
        eval_images: 50,
    })?;
    for line in quant.table().lines() {
        log(&format!("      {line}"));
    }
    // What `edgeseg-run --precision auto` picks on this machine.
    let files = ModelFiles {
        float: Some(float_path.clone()),
        int8: Some(int8_path.clone()),
    };
    let selection = firmware::precision::select(
        &files,
        Choice::Auto,
        &CpuFeatures::native(),
        Options::default(),
        firmware::segmenter::default_threads(),
    )?;
    log(&format!(
        "      edgeseg-run --precision auto: {}",
        selection.summary
    ));
    let precision_auto = selection.segmenter.engine().precision().to_string();
    let precision_trials = selection
        .trials
        .iter()
        .map(|t| PrecisionTrial {
            precision: t.precision.to_string(),
            median_ms: t.median_ms,
            agreement: t.agreement,
        })
        .collect();
    drop(selection);

    // 4. A drive through the runtime's pipeline, as edgeseg-run streams it.
    let source_spec = match &options.data {
        None => format!("synthetic:{}", options.camera),
        Some(root) => format!("dir:{}", root.join("val").display()),
    };
    log(&format!(
        "[4/5] streaming {} frames of {source_spec} through model.onnx",
        options.frames
    ));
    let drive = stream(
        &float_path,
        &source_spec,
        options.seed,
        options.frames,
        vec![
            sink(format!("overlay:{}", out.join("drive").display()))?,
            sink(format!("gif:{}", out.join("drive.gif").display()))?,
            sink(format!("jsonl:{}", out.join("frames.jsonl").display()))?,
        ],
        &mut log,
    )?;

    // 5. The report.
    let mut report = make_report(
        options,
        &config,
        &summary.state,
        train_seconds,
        &export,
        &quant,
        nnef_bytes,
        &drive,
        started.elapsed(),
    );
    report.precision_trials = precision_trials;
    report.precision_auto = precision_auto;
    write_atomic(
        &out.join("report.json"),
        &serde_json::to_vec_pretty(&report).expect("serialisable"),
    )?;
    write_atomic(&out.join("report.md"), markdown(&report).as_bytes())?;
    log(&format!(
        "[5/5] report: {}",
        out.join("report.md").display()
    ));
    Ok(report)
}

/// Streams `source` through `model` into `sinks` with the runtime's pipeline.
pub fn stream(
    model: &Path,
    source: &str,
    seed: u64,
    frames: u64,
    sinks: Vec<Sink>,
    log: &mut impl FnMut(&str),
) -> Result<StreamSummary> {
    let mut segmenter = Segmenter::load(model)?;
    segmenter.set_threads(firmware::segmenter::default_threads());
    let source = firmware::source::open(source, seed)?;
    let options = StreamOptions {
        limit: frames,
        queue: 2,
        report_every: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    sink::stream(source, segmenter, sinks, options, |window, over| {
        log(&format!("      {}", window.line(over)))
    })
    .map_err(Error::from)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|e| Error::io(from, e))?;
    write_atomic(to, &bytes)
}

#[allow(clippy::too_many_arguments)]
fn make_report(
    options: &DemoOptions,
    config: &TrainConfig,
    state: &crate::run::RunState,
    train_seconds: f64,
    export: &crate::export::ExportReport,
    quant: &QuantReport,
    nnef_bytes: u64,
    drive: &StreamSummary,
    elapsed: Duration,
) -> DemoReport {
    let [f, q] = &quant.matrices;
    DemoReport {
        data: options
            .data
            .as_ref()
            .map_or(SYNTHETIC.into(), |d| d.display().to_string()),
        model: format!("{} at {}", config.model.name(), config.size),
        epochs: state.epochs_done,
        train_seconds,
        miou_train_best: state.best_miou,
        miou_float: f.mean_iou(),
        miou_int8: q.mean_iou(),
        pixel_accuracy: [f.pixel_accuracy(), q.pixel_accuracy()],
        int8_agreement: quant.agreement,
        per_class_iou: quant
            .info
            .class_names
            .iter()
            .cloned()
            .zip(f.iou())
            .collect(),
        model_bytes_float: quant.bytes[0] as u64,
        model_bytes_int8: quant.bytes[1] as u64,
        model_bytes_nnef: nnef_bytes,
        macs: export.macs,
        tract_ms: quant.latency_ms,
        precision_trials: Vec::new(),
        precision_auto: String::new(),
        frames: drive.totals.processed,
        fps: drive.fps(),
        latency_ms: STAGES
            .iter()
            .zip(drive.stats.mean_ms())
            .map(|(s, ms)| (s.to_string(), ms.into()))
            .collect(),
        stream_model: "model.onnx (float32)".into(),
        seconds: elapsed.as_secs_f64(),
    }
}

/// The report as Markdown.
pub fn markdown(r: &DemoReport) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let mut s = String::from("# edgeseg demo\n\n");
    s += &format!(
        "{} trained on {} for {} epochs ({:.1} min); the whole demo took {:.1} min.\n\n",
        r.model,
        r.data,
        r.epochs,
        r.train_seconds / 60.0,
        r.seconds / 60.0
    );
    s += "![drive](drive.gif)\n\n";
    s += "| | float32 | int8 |\n| --- | --- | --- |\n";
    s += &format!(
        "| validation mIoU (tract) | {:.4} | {:.4} |\n",
        r.miou_float, r.miou_int8
    );
    s += &format!(
        "| pixel accuracy | {:.4} | {:.4} |\n",
        r.pixel_accuracy[0], r.pixel_accuracy[1]
    );
    s += &format!(
        "| file | {:.2} MB | {:.2} MB |\n",
        mb(r.model_bytes_float),
        mb(r.model_bytes_int8)
    );
    s += &format!(
        "| tract latency, one frame | {:.1} ms | {:.1} ms |\n\n",
        r.tract_ms[0], r.tract_ms[1]
    );
    s += &format!(
        "Float and int8 agree on {:.2}% of validation pixels. NNEF archive: {:.2} MB. \
         {:.2} GMAC per frame. Best validation mIoU during training (Burn): {:.4}.\n\n",
        100.0 * r.int8_agreement,
        mb(r.model_bytes_nnef),
        r.macs as f64 / 1e9,
        r.miou_train_best
    );
    s += "| class | IoU (float) |\n| --- | --- |\n";
    for (name, iou) in &r.per_class_iou {
        s += &format!(
            "| {name} | {} |\n",
            iou.map_or("-".into(), |v| format!("{v:.3}"))
        );
    }
    s += &format!(
        "\n## Streaming\n\n{} frames through {} in the runtime's pipeline \
         (capture, inference and output threads): **{:.1} FPS**.\n\n",
        r.frames, r.stream_model, r.fps
    );
    s += "| stage | mean ms |\n| --- | --- |\n";
    for stage in STAGES {
        let ms = r.latency_ms.get(stage).and_then(|v| v.as_f64());
        s += &format!("| {stage} | {:.2} |\n", ms.unwrap_or(f64::NAN));
    }
    s += "\n## Precision on this machine\n\n`edgeseg-run --precision auto` (the default) times \
          each precision this CPU supports on synthetic scenes at start-up and keeps the \
          fastest whose masks agree with f32's on 99 % of pixels:\n\n";
    if r.precision_trials.is_empty() {
        s += &format!("only one candidate here: **{}**.\n", r.precision_auto);
    } else {
        s += "| precision | inference ms | pixels as f32 |\n| --- | --- | --- |\n";
        for t in &r.precision_trials {
            s += &format!(
                "| {} | {:.2} | {:.2} % |\n",
                t.precision,
                t.median_ms,
                100.0 * t.agreement
            );
        }
        s += &format!("\nauto picks **{}** here.\n", r.precision_auto);
    }
    if r.data == SYNTHETIC {
        s += "\nCapture is the synthetic renderer drawing each frame (a camera delivers \
              them ready); it runs on its own thread beside inference.\n";
    }
    s += "\n![curves](curves.png)\n\n![predictions](grid.png)\n";
    s
}

impl DemoReport {
    /// What `edgeseg demo` prints at the end: the headline numbers, the files
    /// written to `out`, and how to run the model on a Raspberry Pi.
    pub fn summary(&self, out: &Path) -> String {
        let mut text = format!(
            "\nvalidation mIoU float {:.4}, int8 {:.4}; models {:.2} MB float, {:.2} MB int8; \
             drive {:.1} FPS ({:.1} ms per frame end to end)\nwrote to {}:\n",
            self.miou_float,
            self.miou_int8,
            self.model_bytes_float as f64 / 1e6,
            self.model_bytes_int8 as f64 / 1e6,
            self.fps,
            self.latency_ms["total"].as_f64().unwrap_or(f64::NAN),
            out.display(),
        );
        for file in OUTPUTS {
            text += &format!("  {}\n", out.join(file).display());
        }
        text += &format!(
            "\nOn a Raspberry Pi (after `deploy/bundle.sh aarch64-unknown-linux-gnu {} edgeseg-pi.tar.gz`,\n\
             which ships model.onnx and model.int8.onnx; --precision auto keeps the faster one that agrees):\n{}",
            out.join("model.onnx").display(),
            pi_command("model.onnx")
        );
        text
    }
}

/// The command that streams the demo's model from a Raspberry Pi camera.
pub fn pi_command(model: &str) -> String {
    format!(
        "rpicam-vid -t 0 --codec yuv420 --width 640 --height 480 -o - | \\\n    \
         edgeseg-run --model {model} --source stdin:yuv420:640x480 --sink http:0.0.0.0:8080"
    )
}
