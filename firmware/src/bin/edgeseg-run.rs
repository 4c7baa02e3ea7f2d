//! `edgeseg-run`: the on-board runtime of edgeseg.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use firmware::Size;
use firmware::sink::{self, Sink, StreamOptions};
use firmware::source::{FrameSource, SyntheticSource};

use firmware::engine::{self, Options};
use firmware::precision::{Choice, CpuFeatures, ModelFiles};
use firmware::stats::Histogram;

/// Stream camera frames through a segmentation model and deliver the masks.
#[derive(Debug, Parser)]
#[command(name = "edgeseg-run", version, about, long_about = None)]
struct Cli {
    /// ONNX model written by `edgeseg export` or `edgeseg quantize`; its metadata
    /// sets the input size, normalisation, classes and palette. Without it the
    /// synthetic source's ground-truth labels stand in for model output.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Frame source: `synthetic[:WxH]` (a drive from the built-in road-scene
    /// generator), `stdin:FORMAT:WxH` (raw frames on standard input, as
    /// `rpicam-vid --codec yuv420 -o -` or `ffmpeg -f rawvideo` write them;
    /// FORMAT is yuv420, nv12, yuyv, rgb, bgr or gray), `mjpeg:PATH` or
    /// `mjpeg:-` (concatenated JPEGs, as `rpicam-vid --codec mjpeg` writes),
    /// `dir:PATH` (pictures in name order), `v4l2:/dev/videoN[:WxH]` (a USB
    /// camera, or the Pi camera under libcamerify; builds with the `v4l2`
    /// feature; reopened with backoff when it goes away).
    #[arg(long, default_value = "synthetic:480x360")]
    source: String,
    /// Where masks go (repeatable): `jsonl:PATH` or `jsonl:-` (one JSON object
    /// per frame: seq, latency_ms per stage, class fractions), `png:DIR` (one
    /// class-id PNG per frame), `color:DIR` (colour masks), `overlay:DIR` (the
    /// frame with the class colours over it), `frames:DIR` (the frames as
    /// captured), `gif:PATH` (an animated GIF of the overlays), `mjpeg:PATH`
    /// (the overlays as concatenated JPEGs), `http:ADDR` (live view: a page with the
    /// overlaid stream, FPS, latency and class fractions, and `/metrics`; use
    /// 127.0.0.1:8080, or 0.0.0.0:8080 to reach it from another machine),
    /// `tcp:ADDR`, `udp:ADDR`, `serial:PATH` (the postcard wire protocol: frame
    /// header, class summary and run-length mask, CRC-checked and COBS-framed;
    /// a slow or absent consumer loses frames, never stalls the pipeline).
    #[arg(long)]
    sink: Vec<String>,
    /// Show only errors and the final counters (no periodic statistics).
    #[arg(long, short)]
    quiet: bool,
    /// Show more: -v progress records (tract's included), -vv debug records
    /// (such as how tract lowered each layer).
    #[arg(long, short, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Replace output files that exist, and the frame pictures an earlier run
    /// left in a picture folder; without it they are refused, so one run never
    /// silently mixes with or destroys another's.
    #[arg(long)]
    overwrite: bool,
    /// Stop after this many frames (default: when the source ends; the
    /// synthetic source never does).
    #[arg(long)]
    frames: Option<u64>,
    /// Frames each queue between capture, inference and output holds; with a
    /// live source (stdin) the oldest frame is dropped when a stage falls behind.
    #[arg(long, default_value_t = 2)]
    queue: usize,
    /// Seconds between progress lines (FPS, per-stage latency) on stderr; 0 for none.
    #[arg(long, default_value_t = 5.0)]
    report_every: f64,
    /// Print the model's metadata (classes, input size, normalisation,
    /// architecture, precision), the CPU features tract sees, the precision
    /// chosen and the matrix kernels its graph uses, as JSON, and exit.
    #[arg(long, requires = "model")]
    info: bool,
    /// Arithmetic to run the model in: `f32`, `f16` (derived from the float
    /// model at load; fast where the CPU has half-precision arithmetic, such
    /// as a Raspberry Pi 5 or a Jetson Orin), `int8` (the `edgeseg quantize`
    /// model, found beside the float one as NAME.int8.onnx), or `auto`: time
    /// each candidate this CPU supports on a few synthetic scenes at start-up
    /// and keep the fastest whose masks agree with f32's on 99 % of pixels.
    #[arg(long, default_value = "auto")]
    precision: Choice,
    /// Test-time augmentation: `flip` sums each frame's class scores with
    /// those of its mirror image before the argmax, as `edgeseg eval --tta
    /// flip` scores a model: twice the inference time, for about a point of
    /// mIoU on streets the model has not seen (BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = Tta::None)]
    tta: Tta,
    /// Run 3x3 convolutions with tract's im2col and matrix product instead of
    /// edgeseg's Winograd operator (also `EDGESEG_WINOGRAD=0`).
    #[arg(long)]
    no_winograd: bool,
    /// Run every convolution (float and int8) with tract's own operators
    /// instead of edgeseg's (also `EDGESEG_OWN_OPS=0`).
    #[arg(long)]
    no_own_ops: bool,
    /// Threads for inference (tract's matrix products); capture and output
    /// have their own threads besides. Default: one per core but one (3 on a
    /// Raspberry Pi 5). With cheap capture, all cores can be faster (1.5x on
    /// 2 cores with raw frames from stdin, BENCHMARKS.md).
    #[arg(long)]
    threads: Option<usize>,
    /// Frames segmented at once, each on its own thread with its own copy of
    /// the model's state (the weights are shared). Raises frames per second
    /// when one frame cannot keep the cores busy (tract parallelises little
    /// within a frame: 1.2x from 1 to 2 threads here, BENCHMARKS.md); each
    /// frame's latency stays that of one worker. Results leave in capture
    /// order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Seed of the synthetic drive.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run this camera command (with `sh -c`) and read its output instead of
    /// standard input, for `stdin:FORMAT:WxH` and `mjpeg:-` sources; when it
    /// exits or fails (a camera unplugged, a crash), start it again after a
    /// wait that doubles from 0.25 s up to 10 s.
    /// Example: --exec "rpicam-vid -t 0 -n --codec yuv420 --width 640 --height 480 -o -"
    #[arg(long)]
    exec: Option<String>,
    /// With --exec or a v4l2 source: give up after this many reopenings in a
    /// row without a frame (default: never).
    #[arg(long)]
    max_restarts: Option<u32>,
}

/// `--tta`: what is averaged before the argmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Tta {
    /// The frame alone.
    None,
    /// The frame and its mirror image.
    Flip,
}

fn parse_source(s: &str) -> anyhow::Result<Size> {
    match s.split_once(':') {
        None if s == "synthetic" => Ok(Size::new(480, 360)),
        Some(("synthetic", size)) => size
            .parse()
            .map_err(|e| anyhow::anyhow!("--source {s}: {e}")),
        _ => anyhow::bail!("--source {s}: unknown source; this build knows `synthetic[:WxH]`"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let limit = cli.frames.unwrap_or(u64::MAX);
    let Some(model) = &cli.model else {
        // Without a model: the synthetic drive's own labels, as a smoke test.
        let size = parse_source(&cli.source)?;
        let mut source = SyntheticSource::new(size, cli.seed);
        let mut out = std::io::stdout().lock();
        for i in 0..cli.frames.unwrap_or(1) {
            source.next_frame()?;
            let hist = Histogram::of(source.labels());
            writeln!(out, "frame {i} {size}: class histogram (pixels)")?;
            for (name, n) in firmware::CLASS_NAMES.iter().zip(hist.counts) {
                writeln!(out, "  {name:<11} {n:>8}")?;
            }
        }
        return Ok(());
    };
    let int8 = engine::file_info(model)?.precision == "int8";
    let files = ModelFiles::around(model, int8);
    let cpu = CpuFeatures::native();
    let mut options = Options::default();
    options.winograd &= !cli.no_winograd;
    options.own_ops &= !cli.no_own_ops;
    let threads = cli
        .threads
        .unwrap_or_else(firmware::segmenter::default_threads);
    let selection = firmware::precision::select(&files, cli.precision, &cpu, options, threads)?;
    eprintln!("{}", selection.summary);
    let mut segmenter = selection.segmenter;
    segmenter.set_flip(cli.tta == Tta::Flip);
    if segmenter.flip() {
        eprintln!("test-time flip averaging: two inferences a frame");
    }
    if cli.info {
        let info = segmenter.info();
        let engine = segmenter.engine();
        let mut kernels = std::collections::BTreeMap::<String, usize>::new();
        for k in engine.matmul_kernels() {
            *kernels.entry(k.kernel).or_default() += 1;
        }
        let json = serde_json::json!({
            "class_names": info.class_names,
            "palette": info.palette,
            "void": info.void,
            "input_size": info.input_size.to_string(),
            "mean": info.mean,
            "std": info.std,
            "architecture": info.architecture,
            "val_miou": info.val_miou,
            "precision": info.precision,
            "quantized": int8,
            "cpu_features": cpu.names,
            "cpu_f16_arithmetic": cpu.f16_arithmetic,
            "cpu_f16_products": cpu.f16_products,
            "cpu_int8_dot_product": cpu.int8_dot,
            "running": {
                "precision": engine.precision().name(),
                "file": files.for_precision(engine.precision()),
                "threads": threads,
                "tta_flip": segmenter.flip(),
                "winograd_convolutions": engine.winograd_convs(),
                "own_convolutions": engine.own_convs(),
                "matmul_kernels": kernels,
            },
            "trials": selection.trials.iter().map(|t| serde_json::json!({
                "precision": t.precision.name(),
                "median_ms": t.median_ms,
                "agreement": t.agreement,
                "frames": t.frames,
            })).collect::<Vec<_>>(),
        });
        println!("{json}");
        return Ok(());
    }
    let source = if cli.exec.is_some() || cli.source.starts_with("v4l2:") {
        let backoff = firmware::source::Backoff {
            give_up_after: cli.max_restarts,
            ..Default::default()
        };
        firmware::source::open_camera(
            &cli.source,
            cli.exec.as_deref(),
            backoff,
            Box::new(|line| eprintln!("{line}")),
        )?
    } else {
        firmware::source::open(&cli.source, cli.seed)?
    };
    // systemd's stop (SIGTERM), Ctrl-C (SIGINT) and a closed terminal
    // (SIGHUP) end the run cleanly: capture stops, what is queued is written,
    // every sink is finished. A second signal ends the process at once.
    let stop = firmware::pipeline::Stop::new();
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.requested() {
                eprintln!("second signal: exiting without finishing the outputs");
                std::process::exit(130);
            }
            eprintln!("stopping: finishing the frames in flight and the outputs");
            stop.request();
        })
        .context("installing the SIGTERM/SIGINT handler")?;
    }
    let sinks = cli
        .sink
        .iter()
        .map(|s| {
            if cli.overwrite {
                Sink::open_replacing(s)
            } else {
                Sink::open(s)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    for sink in &sinks {
        if let Sink::Http(view) = sink {
            eprintln!("live view on http://{}/", view.addr());
        }
    }
    let info = segmenter.info();
    eprintln!(
        "{}: {} ({}) at {}, {} classes; source {}",
        files
            .for_precision(segmenter.engine().precision())
            .unwrap_or(model)
            .display(),
        info.architecture,
        segmenter.engine().precision(),
        segmenter.mask_size(),
        info.num_classes(),
        cli.source
    );
    let options = StreamOptions {
        limit,
        queue: cli.queue,
        report_every: (cli.report_every > 0.0 && !cli.quiet)
            .then(|| Duration::from_secs_f64(cli.report_every)),
        workers: cli.workers.into(),
        stop: stop.clone(),
        ..Default::default()
    };
    let summary = sink::stream(source, segmenter, sinks, options, |window, over| {
        eprintln!("{}", window.line(over))
    })?;
    for message in &summary.messages {
        eprintln!("{message}");
    }
    eprintln!("{}", summary.stats.line(summary.elapsed));
    let totals = summary.totals;
    eprintln!(
        "{} frames captured, {} processed, {} dropped; {} corrupt frames skipped; {} bytes of an incomplete last frame dropped; camera restarted {} times",
        totals.captured,
        totals.processed,
        totals.dropped,
        totals.source.corrupt,
        totals.source.truncated_bytes,
        totals.source.reopened
    );
    Ok(())
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread starts.
    #[allow(unsafe_code)]
    unsafe {
        firmware::engine::avoid_broken_kernels()
    };
    let cli = Cli::try_parse().inspect(|cli| firmware::logging::init(cli.verbose, cli.quiet));
    match cli {
        Ok(cli) => match run(cli) {
            Ok(()) => ExitCode::SUCCESS,
            // A closed pipe (`edgeseg-run ... | head`) is a normal way to stop.
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
            {
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", firmware::error::chain_message(e.as_ref()));
                ExitCode::FAILURE
            }
        },
        // `--help` and `--version` print and succeed; usage errors exit 2.
        Err(e) => {
            let _ = e.print();
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
    }
}
