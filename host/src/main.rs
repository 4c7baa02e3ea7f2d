//! `edgeseg`: the workstation command line of edgeseg.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firmware::Size;
use host::config::defaults;
use host::data::Augment;
use host::demo::DemoOptions;

/// Train, evaluate and export road-scene segmentation models for edge boards.
#[derive(Debug, Parser)]
#[command(name = "edgeseg", version, about, long_about = None)]
struct Cli {
    /// Hide progress bars and show only errors.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Show more: -v progress records (tract's included), -vv debug records.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole product in one command: synthetic road scenes (or --data), a
    /// trained LinkNet, float, int8 and NNEF models, a drive streamed through
    /// the on-board pipeline, and report.md / report.json with the numbers.
    Demo {
        /// Output folder (created; the demo's own files in it are replaced).
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        /// A dataset in the CamVid layout instead of synthetic scenes; its
        /// validation pictures are then the streamed drive.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Training budget in minutes.
        #[arg(long, default_value_t = DemoOptions::default().train_minutes, value_parser = parse_minutes)]
        train_minutes: f64,
        /// Model input size as WIDTHxHEIGHT.
        #[arg(long, default_value_t = DemoOptions::default().size)]
        size: Size,
        /// Synthetic training scenes.
        #[arg(long, default_value_t = DemoOptions::default().scenes.0)]
        train_scenes: usize,
        /// Synthetic validation scenes.
        #[arg(long, default_value_t = DemoOptions::default().scenes.1)]
        val_scenes: usize,
        /// Frames of the streamed drive.
        #[arg(long, default_value_t = DemoOptions::default().frames)]
        frames: u64,
        /// Camera frame size of the synthetic drive.
        #[arg(long, default_value_t = DemoOptions::default().camera)]
        camera: Size,
        /// Seed of the scenes, the training and the drive.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// At the end, keep streaming the drive to a live view on this address
        /// (such as 127.0.0.1:8080) until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
        serve: Option<String>,
    },
    /// Write synthetic road scenes as a dataset in the CamVid layout
    /// (`train/`, `trainannot/`, `val/`, `valannot/`; labels are 8-bit class ids, 11 = void).
    Synth {
        /// Folder to write the dataset into (created if missing; files in it are replaced).
        #[arg(long)]
        out: PathBuf,
        /// Number of training images.
        #[arg(long, default_value_t = 200)]
        train: usize,
        /// Number of validation images.
        #[arg(long, default_value_t = 40)]
        val: usize,
        /// Image size as WIDTHxHEIGHT.
        #[arg(long, default_value = "480x360")]
        size: Size,
        /// Seed: the same seed writes byte-identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a U-Net or LinkNet; writes a run folder with checkpoints, metrics.csv
    /// and curves.png.
    Train(Box<TrainArgs>),
    /// Score a trained run on a dataset split at the labels' own resolution.
    Eval {
        /// Run folder written by `edgeseg train`.
        #[arg(long)]
        run: PathBuf,
        /// Dataset folder in the CamVid layout; without it, the run's own
        /// validation data (synthetic scenes if it was trained on them).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Split to score.
        #[arg(long, default_value = "val")]
        split: String,
        /// Weights to score: best.bpk or last.bpk.
        #[arg(long, default_value = "best.bpk")]
        weights: String,
        /// Test-time augmentation: `flip` averages each picture's scores with
        /// its mirror image's (twice the inference).
        #[arg(long, value_enum, default_value_t = host::inference::Tta::None)]
        tta: host::inference::Tta,
        /// Also write the scores as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Segment images: writes for each a class-id mask, a colour mask and an overlay.
    Predict {
        /// Run folder written by `edgeseg train`.
        #[arg(long)]
        run: PathBuf,
        /// Images to segment.
        images: Vec<PathBuf>,
        /// Folder for the output pictures.
        #[arg(long)]
        out: PathBuf,
        /// Also write `grid.png`: this many validation samples as columns, with rows
        /// image / ground truth / prediction.
        #[arg(long)]
        grid: Option<usize>,
        /// Dataset (CamVid layout) whose validation split the grid shows; without
        /// it, the run's own validation data.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Weights to use: best.bpk or last.bpk.
        #[arg(long, default_value = "best.bpk")]
        weights: String,
    },
    /// Write a trained run as an ONNX file (opset 13, batch norms folded, input
    /// `image` 1x3xHxW, output `logits` 1xCxHxW) that carries its class names,
    /// palette, input size and normalisation; then check it in tract against Burn.
    Export {
        /// Run folder written by `edgeseg train`.
        #[arg(long)]
        run: PathBuf,
        /// ONNX file to write.
        #[arg(long)]
        out: PathBuf,
        /// Weights to export: best.bpk or last.bpk.
        #[arg(long, default_value = "best.bpk")]
        weights: String,
        /// Input size as WIDTHxHEIGHT (the training size by default).
        #[arg(long)]
        size: Option<Size>,
        /// Validation images on which tract's output is compared with Burn's.
        #[arg(long, default_value_t = 4)]
        check_images: usize,
        /// Also write tract's NNEF translation of the model here (`.nnef.tgz`),
        /// which a board loads without the ONNX translation step.
        #[arg(long)]
        nnef: Option<PathBuf>,
    },
    /// Quantise a float ONNX model to int8 that tract runs with integer kernels,
    /// then report per-class IoU float vs int8, pixel agreement, file sizes,
    /// tract latency and which convolutions run in integers.
    Quantize {
        /// Float ONNX file (from `edgeseg export`).
        #[arg(long)]
        model: PathBuf,
        /// Calibration pictures: a folder of images, or a dataset (its train/ split).
        #[arg(long)]
        calib: PathBuf,
        /// Calibration pictures to use at most (spread over the folder).
        #[arg(long, default_value_t = 32)]
        calib_images: usize,
        /// int8 ONNX file to write.
        #[arg(long)]
        out: PathBuf,
        /// Weight scales per output channel instead of per tensor (more accurate
        /// without equalisation, but tract does not fuse its requantisation).
        #[arg(long)]
        per_channel: bool,
        /// Activation ranges: `minmax`, or a percentile such as `99.99`.
        #[arg(long, default_value = "99.99")]
        calibration: model_export::quant::Calibration,
        /// Activation storage: `i8` or `u8` (onnxruntime's default).
        #[arg(long, default_value = "i8")]
        activations: model_export::quant::Activations,
        /// Skip cross-layer equalisation.
        #[arg(long)]
        no_equalize: bool,
        /// Skip bias correction.
        #[arg(long)]
        no_bias_correction: bool,
        /// Labelled dataset whose validation split scores float against int8
        /// (synthetic scenes without it).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Validation images to score at most.
        #[arg(long, default_value_t = 50)]
        eval_images: usize,
    },
    /// Time training steps on random data (the Burn half of `bench/train-step.sh`,
    /// which runs PyTorch on the same network beside it).
    BenchStep {
        /// Architecture.
        #[arg(long, value_enum, default_value_t = Arch::Unet)]
        model: Arch,
        /// U-Net: channels of the first level.
        #[arg(long, default_value_t = 16)]
        base_width: usize,
        /// LinkNet: channel multiplier.
        #[arg(long, default_value_t = 1.0)]
        width: f32,
        /// Input size as WIDTHxHEIGHT.
        #[arg(long, default_value = "256x256")]
        size: Size,
        /// Images per step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Device, or several separated by commas for data parallel (as
        /// `edgeseg train --device`).
        #[arg(long, alias = "devices", default_value = "cpu")]
        device: host::device::Devices,
    },
}

/// Architectures `edgeseg train` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Arch {
    /// U-Net (Ronneberger et al. 2015).
    Unet,
    /// LinkNet with a ResNet-18 encoder.
    Linknet18,
    /// LinkNet with a ResNet-34 encoder.
    Linknet34,
}

#[derive(Debug, clap::Args)]
struct TrainArgs {
    /// Dataset folder in the CamVid layout (train/, trainannot/, val/, valannot/).
    /// Without it, training uses synthetic road scenes rendered on the fly.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Architecture.
    #[arg(long, value_enum, default_value_t = Arch::Linknet18)]
    model: Arch,
    /// U-Net: channels of the first level (64 gives the original network).
    #[arg(long, default_value_t = defaults::UNET_BASE_WIDTH)]
    base_width: usize,
    /// LinkNet: multiplier of every channel count (1.0 is the paper's network).
    #[arg(long, default_value_t = defaults::LINKNET_WIDTH)]
    width: f32,
    /// U-Net: bilinear upsampling instead of transposed convolutions.
    #[arg(long)]
    bilinear: bool,
    /// LinkNet: add the stem's half-resolution features to the last decoder
    /// stage (not in the paper) for objects a few pixels wide, such as poles.
    #[arg(long)]
    stem_skip: bool,
    /// Training and model input size as WIDTHxHEIGHT; images are resized to it.
    #[arg(long, default_value_t = defaults::SIZE)]
    size: Size,
    /// Train on random WIDTHxHEIGHT windows of the --size images: thin objects
    /// keep the detail of the larger size at the step cost of the crop.
    /// Validation, evaluation and export use whole --size images.
    #[arg(long)]
    crop: Option<Size>,
    /// Passes over the training set [default: 10, or with --time-limit as
    /// many as the budget allows].
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per step.
    #[arg(long, default_value_t = defaults::BATCH)]
    batch: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = defaults::LR)]
    lr: f64,
    /// Weight decay.
    #[arg(long, default_value_t = defaults::WEIGHT_DECAY)]
    weight_decay: f64,
    /// Optimiser.
    #[arg(long, value_enum, default_value_t = host::config::OptimizerKind::Adamw)]
    optimizer: host::config::OptimizerKind,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = host::config::Schedule::Cosine)]
    schedule: host::config::Schedule,
    /// Loss: ce, bce, dice, focal, or a weighted sum such as `ce+0.5*dice`.
    #[arg(long, default_value = "ce")]
    loss: host::loss::LossConfig,
    /// Class weights for cross-entropy and focal loss: `none`, `median`
    /// (median-frequency balancing from the training labels), `sqrt-median`
    /// (their square roots: gentler on rare classes), or a comma list.
    #[arg(long, default_value = "none")]
    class_weights: host::config::ClassWeights,
    /// Switch off all augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Switch off horizontal flips.
    #[arg(long)]
    no_flip: bool,
    /// Largest random zoom (scale then crop); 1 switches it off.
    #[arg(long, default_value_t = Augment::default().max_scale, value_parser = parse_scale)]
    max_scale: f32,
    /// Smallest random zoom: below 1, zooms are drawn log-uniformly between
    /// --min-scale and --max-scale and taken from the source picture (a zoom
    /// out shrinks the picture onto a void border); 1 keeps zooms in only.
    #[arg(long, default_value_t = Augment::default().min_scale, value_parser = parse_min_scale)]
    min_scale: f32,
    /// White-balance jitter: each colour channel scaled by a factor in
    /// [1-w, 1+w]; 0 switches it off.
    #[arg(long, default_value_t = Augment::default().white_balance, value_parser = parse_jitter)]
    white_balance: f32,
    /// Largest random rotation in degrees; 0 switches it off.
    #[arg(long, default_value_t = Augment::default().rotate_degrees)]
    rotate: f32,
    /// Brightness/contrast/saturation jitter fraction; 0 switches it off.
    #[arg(long, default_value_t = Augment::default().color_jitter)]
    color_jitter: f32,
    /// Pixel noise standard deviation (0..255 scale); 0 switches it off.
    #[arg(long, default_value_t = Augment::default().noise)]
    noise: f32,
    /// Largest blur sigma; 0 switches blur off.
    #[arg(long, default_value_t = Augment::default().blur)]
    blur: f32,
    /// Share of a plain images/ + masks/ folder held out for validation.
    #[arg(long, default_value_t = defaults::VAL_FRACTION)]
    val_fraction: f32,
    /// Hold out a whole drive (or city) for validation, by file-name prefix
    /// (CamVid: 0001TP, 0006R0, 0016E5; Cityscapes: a city); repeat or
    /// separate with commas for several. The dataset's train and val splits
    /// are pooled and cut by sequence, so the validation figure is on
    /// streets the model never saw.
    #[arg(long, value_delimiter = ',')]
    val_sequence: Vec<String>,
    /// Train on the dataset's train and val splits together: the final
    /// training once a recipe is chosen (on held-out drives, --val-sequence).
    /// Validation still runs on val, which the model then has seen, so its
    /// figures no longer measure anything; use last.bpk, not best.bpk.
    #[arg(long, conflicts_with = "val_sequence")]
    train_on_val: bool,
    /// Validate after every N-th epoch only (and after the first and the
    /// last); saves time when the validation set is large, such as a
    /// held-out drive.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    val_every: u64,
    /// Synthetic training scenes (without --data).
    #[arg(long, default_value_t = defaults::SYNTHETIC_TRAIN)]
    synthetic_train: usize,
    /// Synthetic validation scenes (without --data).
    #[arg(long, default_value_t = defaults::SYNTHETIC_VAL)]
    synthetic_val: usize,
    /// Stop after this many epochs without a better validation mIoU.
    #[arg(long)]
    patience: Option<usize>,
    /// Wall-clock budget in minutes: the learning-rate schedule runs on elapsed
    /// time and training ends with the epoch in which the budget runs out
    /// (--epochs is then an upper bound).
    #[arg(long, value_parser = parse_minutes)]
    time_limit: Option<f64>,
    /// LinkNet: start the encoder from ImageNet ResNet weights, torchvision's
    /// `resnet18-f37072fd.pth` / `resnet34-b627a593.pth` or the same state dict
    /// as `.safetensors` (needs --width 1.0).
    #[arg(long)]
    encoder_weights: Option<PathBuf>,
    /// Progressive resizing: epochs that start within this fraction of the run
    /// (of --time-limit when given, else of the steps) train at half --size
    /// on each side, four times cheaper per step; validation stays at --size.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    progressive: f64,
    /// Seed of initialisation, shuffling, augmentation and synthetic scenes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Loader threads.
    #[arg(long, default_value_t = defaults::WORKERS)]
    workers: usize,
    /// Device to train on: cpu, or with the matching cargo feature wgpu,
    /// vulkan, cuda or rocm, each optionally `:N` for GPU number N (wgpu and
    /// vulkan also take `:cpu`, a software adapter such as lavapipe). Several,
    /// separated by commas (`--devices cuda:0,cuda:1`), train data parallel:
    /// each batch is split across them, and the first holds the model and
    /// evaluates. Not stored in the run: a run resumes on any devices.
    #[arg(long, alias = "devices", default_value = "cpu")]
    device: host::device::Devices,
    /// Run folder: config.json, best.bpk, last.bpk, metrics.csv, curves.png.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint (other flags are
    /// taken from its config.json).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace the run in --out (without it, a folder holding a trained run is
    /// refused). Its files are removed only once the new run's inputs are
    /// validated; a folder with files that are not a run's is never taken.
    #[arg(long)]
    overwrite: bool,
}

impl TrainArgs {
    fn config(&self) -> anyhow::Result<host::config::TrainConfig> {
        use host::model::ModelConfig;
        let data = host::data::DataSpec {
            root: self.data.clone(),
            val_fraction: self.val_fraction,
            synthetic_train: self.synthetic_train,
            synthetic_val: self.synthetic_val,
            seed: self.seed,
            val_sequences: self.val_sequence.clone(),
            train_on_val: self.train_on_val,
        };
        // The classes come from the data: CamVid's, Cityscapes', a class_dict.csv, or binary.
        let labels = host::data::Source::open(&data, "train", self.size)?.labels();
        let classes = labels.num_classes();
        let model = match self.model {
            Arch::Unet => ModelConfig::Unet {
                num_classes: classes,
                base_width: self.base_width,
                depth: 4,
                bilinear: self.bilinear,
            },
            Arch::Linknet18 => ModelConfig::linknet(classes, 18, self.width),
            Arch::Linknet34 => ModelConfig::linknet(classes, 34, self.width),
        }
        .with_stem_skip(self.stem_skip);
        let mut c = host::config::TrainConfig::new(model, self.size);
        c.data = data;
        c.labels = labels;
        c.epochs = match (self.epochs, self.time_limit) {
            (Some(epochs), _) => Some(epochs),
            (None, Some(_)) => None,
            (None, None) => Some(defaults::EPOCHS),
        };
        c.batch = self.batch;
        c.lr = self.lr;
        c.weight_decay = self.weight_decay;
        c.optimizer = self.optimizer;
        c.schedule = self.schedule;
        c.loss = self.loss.clone();
        c.class_weights = self.class_weights.clone();
        c.augment = (!self.no_augment).then_some(host::data::Augment {
            flip: !self.no_flip,
            max_scale: self.max_scale,
            min_scale: self.min_scale,
            white_balance: self.white_balance,
            rotate_degrees: self.rotate,
            color_jitter: self.color_jitter,
            noise: self.noise,
            blur: self.blur,
        });
        c.patience = self.patience;
        c.val_every = self.val_every as usize;
        c.time_limit = self.time_limit.map(|minutes| minutes * 60.0);
        c.encoder_weights = self.encoder_weights.clone();
        c.crop = self.crop;
        c.progressive = self.progressive;
        c.seed = self.seed;
        c.workers = self.workers;
        Ok(c)
    }
}

fn parse_minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 => Ok(m),
        _ => Err(format!("expected a positive number of minutes, got {s:?}")),
    }
}

fn parse_scale(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(f) if (1.0..=8.0).contains(&f) => Ok(f),
        _ => Err(format!("expected a zoom factor between 1 and 8, got {s:?}")),
    }
}

fn parse_min_scale(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(f) if (0.125..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "expected a zoom factor between 0.125 and 1, got {s:?}"
        )),
    }
}

fn parse_jitter(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(f) if (0.0..1.0).contains(&f) => Ok(f),
        _ => Err(format!("expected a fraction in [0, 1), got {s:?}")),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("expected a fraction between 0 and 1, got {s:?}")),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo {
            out,
            data,
            train_minutes,
            size,
            train_scenes,
            val_scenes,
            frames,
            camera,
            seed,
            serve,
        } => {
            let options = DemoOptions {
                out: out.clone(),
                data,
                train_minutes,
                size,
                scenes: (train_scenes, val_scenes),
                frames,
                camera,
                seed,
                quiet: cli.quiet,
            };
            let report = host::demo::run(&options, |line| eprintln!("{line}"))
                .with_context(|| format!("running the demo into {}", out.display()))?;
            println!("{}", report.summary(&out));
            if let Some(addr) = serve {
                let sink = firmware::sink::Sink::open(&format!("http:{addr}"))?;
                if let firmware::sink::Sink::Http(view) = &sink {
                    println!("\nlive view on http://{}/ (Ctrl-C to stop)", view.addr());
                }
                let source = match &options.data {
                    None => format!("synthetic:{camera}"),
                    Some(root) => format!("dir:{}", root.join("val").display()),
                };
                host::demo::stream(
                    &out.join("model.onnx"),
                    &source,
                    seed,
                    u64::MAX,
                    vec![sink],
                    &mut |line| eprintln!("{line}"),
                )?;
            }
        }
        Command::Synth {
            out,
            train,
            val,
            size,
            seed,
        } => {
            let spec = host::synth::SynthSpec {
                train,
                val,
                size,
                seed,
            };
            let bar = host::progress::bar((train + val) as u64, cli.quiet, "synth", "scenes");
            let summary = host::synth::write_dataset(&out, &spec, &|| bar.inc(1))
                .with_context(|| format!("writing the synthetic dataset to {}", out.display()))?;
            bar.finish_and_clear();
            println!(
                "wrote {train} training and {val} validation scenes of {size} to {}",
                out.display()
            );
            println!("class share in train:");
            for (name, f) in summary.classes.iter().zip(&summary.train_fractions) {
                println!("  {name:<11} {:5.1}%", 100.0 * f);
            }
        }
        Command::Train(args) => {
            let run = host::run::RunDir::new(&args.out);
            let config = if args.resume {
                run.config()?
            } else {
                args.config()?
            };
            eprintln!("{} on {}", config.describe(), args.device);
            let start = match (args.resume, args.overwrite) {
                (true, _) => host::run::Start::Resume,
                (false, true) => host::run::Start::Overwrite,
                (false, false) => host::run::Start::New,
            };
            let summary =
                host::train::train_on(&args.device, &config, &run, start, cli.quiet, |line| {
                    println!("{line}")
                })
                .with_context(|| format!("training into {}", args.out.display()))?;
            println!(
                "best validation mIoU {:.4} at epoch {}; run folder {}",
                summary.state.best_miou,
                summary.state.best_epoch,
                args.out.display()
            );
        }
        Command::Eval {
            run,
            data,
            split,
            weights,
            tta,
            json,
        } => {
            let report =
                host::eval::evaluate_run(&run, data.as_deref(), &split, &weights, tta, cli.quiet)
                    .with_context(|| format!("evaluating {}", run.display()))?;
            print!("{}", report.table());
            if let Some(path) = json {
                host::io::write_atomic(&path, &serde_json::to_vec_pretty(&report.to_json())?)?;
                println!("wrote {}", path.display());
            }
        }
        Command::Predict {
            run,
            images,
            out,
            grid,
            data,
            weights,
        } => {
            if images.is_empty() && grid.is_none() {
                anyhow::bail!("give images to segment, or --grid N");
            }
            let dir = host::run::RunDir::new(&run);
            let config = dir.config()?;
            let predictor = host::predict::Predictor::from_run(&dir, &weights)?;
            let written = host::predict::predict_files(&predictor, &images, &out)?;
            println!("wrote {} files to {}", written.len(), out.display());
            if let Some(count) = grid {
                let mut spec = config.data.clone();
                if data.is_some() {
                    spec.root = data;
                }
                let source = host::data::Source::open(&spec, "val", config.size)?;
                let path = out.join("grid.png");
                host::predict::write_grid(&predictor, &source, count, &path)?;
                println!("wrote {}", path.display());
            }
        }
        Command::Quantize {
            model,
            calib,
            calib_images,
            out,
            per_channel,
            calibration,
            activations,
            no_equalize,
            no_bias_correction,
            data,
            eval_images,
        } => {
            use model_export::quant::{QuantOptions, WeightScheme};
            let job = host::quantize::QuantizeJob {
                model: model.clone(),
                calib,
                calib_images,
                out: out.clone(),
                options: QuantOptions {
                    activations,
                    weights: if per_channel {
                        WeightScheme::PerChannel
                    } else {
                        WeightScheme::PerTensor
                    },
                    calibration,
                    equalize: !no_equalize,
                    bias_correction: !no_bias_correction,
                },
                data,
                eval_images,
            };
            let report = host::quantize::quantize_file(&job)
                .with_context(|| format!("quantising {}", model.display()))?;
            println!("wrote {}", out.display());
            print!("{}", report.table());
        }
        Command::BenchStep {
            model,
            base_width,
            width,
            size,
            batch,
            steps,
            warmup,
            device,
        } => {
            use host::model::ModelConfig;
            let config = match model {
                Arch::Unet => ModelConfig::unet(11, base_width),
                Arch::Linknet18 => ModelConfig::linknet(11, 18, width),
                Arch::Linknet34 => ModelConfig::linknet(11, 34, width),
            };
            let times = host::train::bench_steps(&device, &config, size, batch, warmup, steps)?;
            println!("{}", times.to_json());
        }
        Command::Export {
            run,
            out,
            weights,
            size,
            check_images,
            nnef,
        } => {
            let dir = host::run::RunDir::new(&run);
            let report = host::export::export_run(&dir, &weights, size, &out, check_images)
                .with_context(|| format!("exporting {}", run.display()))?;
            println!("{}", report.summary(&out));
            report.agreement.check()?;
            if let Some(path) = nnef {
                let bytes = model_export::nnef::write_nnef(&out, &path)?;
                println!("wrote {} ({:.2} MB)", path.display(), bytes as f64 / 1e6);
            }
        }
    }
    Ok(())
}

/// Training allocates and frees tensors of tens of MiB every step. glibc, and
/// mimalloc with its default 10 ms purge delay, hand those pages back to the
/// kernel, which faults them in zeroed again on the next step: a fifth of a
/// U-Net step here (BENCHMARKS.md, "Training step").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the `mi_option_e` enum of the mimalloc 3.x
/// header bundled with libmimalloc-sys 0.1.49 (pinned in Cargo.toml), which
/// defines no Rust constant for it: the entry just before `use_numa_nodes`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const _: () = assert!(libmimalloc_sys::mi_option_use_numa_nodes == MI_OPTION_PURGE_DELAY + 1);

/// Keeps freed memory mapped for reuse (peak RSS is reported by the
/// benchmarks; the working set of a training step is reused every step).
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option
    // table; it is safe to call at any time from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread starts.
    #[allow(unsafe_code)]
    unsafe {
        firmware::engine::avoid_broken_kernels()
    };
    keep_freed_memory();
    let cli = Cli::parse();
    firmware::logging::init(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", firmware::error::chain_message(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
