//! `edgeseg-run`: the on-board runtime of edgeseg.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use firmware::Size;
use firmware::live::{LiveStats, LiveView};
use firmware::pipeline::{self, Segmented};
use firmware::protocol::FrameHeader;
use firmware::segmenter::Segmenter;
use firmware::source::{FrameSource, SyntheticSource};
use firmware::transport::{Sender, Target, encode_frame};

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
    /// `dir:PATH` (pictures in name order).
    #[arg(long, default_value = "synthetic:480x360")]
    source: String,
    /// Where masks go (repeatable): `jsonl:PATH` or `jsonl:-` (one JSON object
    /// per frame: seq, latency_ms per stage, class fractions), `png:DIR` (one
    /// class-id PNG per frame), `http:ADDR` (live view: a page with the
    /// overlaid stream, FPS, latency and class fractions, and `/metrics`; use
    /// 127.0.0.1:8080, or 0.0.0.0:8080 to reach it from another machine),
    /// `tcp:ADDR`, `udp:ADDR`, `serial:PATH` (the postcard wire protocol: frame
    /// header, class summary and run-length mask, CRC-checked and COBS-framed;
    /// a slow or absent consumer loses frames, never stalls the pipeline).
    #[arg(long)]
    sink: Vec<String>,
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
    /// architecture, precision) as JSON and exit.
    #[arg(long, requires = "model")]
    info: bool,
    /// Seed of the synthetic drive.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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

/// An output for masks.
enum Sink {
    Jsonl(Box<dyn Write>),
    Png(PathBuf),
    Http(LiveView),
    Protocol(Sender),
}

impl Sink {
    fn parse(s: &str) -> anyhow::Result<Sink> {
        match s.split_once(':') {
            Some(("jsonl", "-")) => Ok(Sink::Jsonl(Box::new(std::io::stdout()))),
            Some(("jsonl", path)) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("--sink {s}: cannot create {path}"))?;
                Ok(Sink::Jsonl(Box::new(std::io::BufWriter::new(file))))
            }
            Some(("png", dir)) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("--sink {s}: cannot create {dir}"))?;
                Ok(Sink::Png(PathBuf::from(dir)))
            }
            Some(("http", addr)) => {
                let view = LiveView::start(addr)?;
                eprintln!("live view on http://{}/", view.addr());
                Ok(Sink::Http(view))
            }
            Some(("tcp", addr)) => Ok(Sink::Protocol(Sender::start(Target::Tcp(addr.into())))),
            Some(("udp", addr)) => Ok(Sink::Protocol(Sender::start(Target::Udp(addr.into())))),
            Some(("serial", path)) => {
                // Open once now so a wrong path is reported before the first frame.
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .with_context(|| format!("--sink {s}: cannot open {path}"))?;
                Ok(Sink::Protocol(Sender::start(Target::Serial(path.into()))))
            }
            _ => anyhow::bail!(
                "--sink {s}: expected jsonl:PATH, jsonl:-, png:DIR, http:ADDR, tcp:ADDR, udp:ADDR or serial:PATH"
            ),
        }
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
    let segmenter = Segmenter::load(model)?;
    if cli.info {
        let info = segmenter.info();
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
        });
        println!("{json}");
        return Ok(());
    }
    let source = firmware::source::open(&cli.source, cli.seed)?;
    let mut sinks = cli
        .sink
        .iter()
        .map(|s| Sink::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let info = segmenter.info().clone();
    let mask_size = segmenter.mask_size();
    eprintln!(
        "{}: {} ({}) at {mask_size}, {} classes; source {}",
        model.display(),
        info.architecture,
        info.precision,
        info.num_classes(),
        cli.source
    );
    let started = Instant::now();
    let mut window = Stats::default();
    let mut all = Stats::default();
    let mut last_report = Instant::now();
    let mut recent = Stats::default();
    let output = |item: &Segmented| -> Result<(), String> {
        let outputs_started = Instant::now();
        let mask = &item.mask;
        let mut counts = vec![0u64; info.num_classes()];
        for &m in mask {
            counts[m as usize] += 1;
        }
        let context = SinkContext {
            counts: &counts,
            info: &info,
            mask_size,
            outputs_started,
            recent: &recent,
            run_started: started,
        };
        for sink in &mut sinks {
            sink.write(item, &context).map_err(|e| format!("{e:#}"))?;
        }
        let t = item.times;
        let stages = [
            item.capture,
            t.preprocess,
            t.inference,
            t.postprocess,
            outputs_started.elapsed(),
            item.started.elapsed(),
        ];
        window.add(&stages);
        all.add(&stages);
        recent.add(&stages);
        if recent.frames >= 30 {
            recent = Stats::default();
        }
        if cli.report_every > 0.0 && last_report.elapsed().as_secs_f64() >= cli.report_every {
            eprintln!("{}", window.line(last_report.elapsed()));
            window = Stats::default();
            last_report = Instant::now();
        }
        Ok(())
    };
    let totals = pipeline::run(source, segmenter, limit, cli.queue, output)?;
    for sink in sinks {
        if let Sink::Protocol(sender) = sink {
            let (sent, dropped) = sender.finish();
            eprintln!("protocol sink: {sent} frames sent, {dropped} dropped");
        }
    }
    eprintln!("{}", all.line(started.elapsed()));
    eprintln!(
        "{} frames captured, {} processed, {} dropped; {} corrupt frames skipped; {} bytes of an incomplete last frame dropped",
        totals.captured,
        totals.processed,
        totals.dropped,
        totals.source.corrupt,
        totals.source.truncated_bytes
    );
    Ok(())
}

/// The pipeline stages timed per frame, in the order `Stats` sums them.
const STAGES: [&str; 6] = [
    "capture",
    "preprocess",
    "inference",
    "postprocess",
    "output",
    "total",
];

/// Sums of per-stage times over frames.
#[derive(Default)]
struct Stats {
    frames: u32,
    sums: [Duration; 6],
    first: Option<Instant>,
}

impl Stats {
    /// Time since the first frame of this window.
    fn span(&self) -> Duration {
        self.first.map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn add(&mut self, stages: &[Duration; 6]) {
        self.first.get_or_insert_with(Instant::now);
        self.frames += 1;
        for (s, d) in self.sums.iter_mut().zip(stages) {
            *s += *d;
        }
    }

    fn line(&self, over: Duration) -> String {
        let n = self.frames.max(1);
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / n as f64;
        let stages: Vec<String> = STAGES
            .iter()
            .zip(self.sums)
            .map(|(stage, d)| format!("{stage} {:.1}", ms(d)))
            .collect();
        format!(
            "{:.1} FPS; mean ms: {}",
            self.frames as f64 / over.as_secs_f64().max(1e-9),
            stages.join(", ")
        )
    }
}

/// What every sink may need about the current frame.
struct SinkContext<'a> {
    counts: &'a [u64],
    info: &'a firmware::model_info::ModelInfo,
    mask_size: Size,
    outputs_started: Instant,
    recent: &'a Stats,
    run_started: Instant,
}

impl Sink {
    fn write(&mut self, item: &Segmented, cx: &SinkContext<'_>) -> anyhow::Result<()> {
        let mask = &item.mask;
        let fraction = |c: u64| c as f64 / mask.len() as f64;
        match self {
            Sink::Png(dir) => {
                let path = dir.join(format!("{:06}.png", item.seq));
                image::GrayImage::from_raw(cx.mask_size.width, cx.mask_size.height, mask.clone())
                    .expect("mask fits its size")
                    .save(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Sink::Jsonl(out) => {
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                let fractions: serde_json::Map<String, serde_json::Value> = cx
                    .info
                    .class_names
                    .iter()
                    .zip(cx.counts)
                    .map(|(n, &c)| (n.clone(), fraction(c).into()))
                    .collect();
                let t = item.times;
                let line = serde_json::json!({
                    "seq": item.seq,
                    "latency_ms": {
                        "capture": ms(item.capture),
                        "preprocess": ms(t.preprocess),
                        "inference": ms(t.inference),
                        "postprocess": ms(t.postprocess),
                        "output": ms(cx.outputs_started.elapsed()),
                        "total": ms(item.started.elapsed()),
                    },
                    "fractions": fractions,
                });
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            Sink::Protocol(sender) => {
                let header = FrameHeader {
                    seq: item.seq as u32,
                    timestamp_us: item.started.duration_since(cx.run_started).as_micros() as u64,
                    width: cx.mask_size.width as u16,
                    height: cx.mask_size.height as u16,
                    classes: cx.info.num_classes() as u8,
                    latency_us: item.started.elapsed().as_micros() as u32,
                };
                sender.send(encode_frame(header, mask).map_err(|e| anyhow::anyhow!("{e}"))?);
            }
            Sink::Http(view) => {
                // The frame at the mask's size with the class colours over it.
                let (w, h) = (cx.mask_size.width as usize, cx.mask_size.height as usize);
                let frame = item.frame.frame();
                let (fw, fh) = (frame.size().width as usize, frame.size().height as usize);
                let mut rgb = Vec::with_capacity(3 * w * h);
                for y in 0..h {
                    for x in 0..w {
                        rgb.extend_from_slice(&frame.rgb(x * fw / w, y * fh / h));
                    }
                }
                firmware::post::overlay(&mut rgb, mask, &cx.info.palette, 120, cx.info.void)?;
                let mut jpeg = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80).encode(
                    &rgb,
                    w as u32,
                    h as u32,
                    image::ExtendedColorType::Rgb8,
                )?;
                let n = cx.recent.frames.max(1) as f64;
                view.publish(
                    jpeg,
                    LiveStats {
                        frames: item.seq + 1,
                        dropped: 0,
                        fps: cx.recent.frames as f64 / cx.recent.span().as_secs_f64().max(1e-9),
                        latency_ms: STAGES
                            .iter()
                            .zip(cx.recent.sums)
                            .map(|(s, d)| (s.to_string(), d.as_secs_f64() * 1e3 / n))
                            .collect(),
                        fractions: cx
                            .info
                            .class_names
                            .iter()
                            .zip(cx.counts)
                            .map(|(n, &c)| (n.clone(), fraction(c)))
                            .collect(),
                        model: format!("{} {}", cx.info.architecture, cx.info.precision),
                    },
                );
            }
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    match Cli::try_parse() {
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
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            let _ = e.print();
            ExitCode::from(2)
        }
    }
}
