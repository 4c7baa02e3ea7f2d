//! Where masks go, and the loop that streams a source through a model into
//! them with per-stage timing: what `edgeseg-run` and `edgeseg demo` share.
//!
//! Sinks (`--sink`, several at once):
//! `jsonl:PATH|-` (one JSON object per frame), `png:DIR` (class-id masks),
//! `color:DIR` (colour masks), `overlay:DIR` (the frame with the class colours
//! over it), `frames:DIR` (the frames as captured, to compare with other
//! tools), `gif:PATH` (an animated GIF of the overlays), `mjpeg:PATH` (the
//! overlays as concatenated JPEGs, which `--source mjpeg:` reads back),
//! `http:ADDR` (the live view), `tcp:ADDR`, `udp:ADDR` and `serial:PATH` (the
//! postcard wire protocol).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Size;
use crate::live::{LiveError, LiveStats, LiveView};
use crate::model_info::ModelInfo;
use crate::pipeline::{self, PipelineError, RunTotals, Segmented, Stop};
use crate::protocol::{FrameHeader, ProtocolError};
use crate::segmenter::Segmenter;
use crate::source::FrameSource;
use crate::transport::{Sender, Target, encode_frame};

/// The timed stages of a frame, in the order [`StageStats`] holds them.
pub const STAGES: [&str; 6] = [
    "capture",
    "preprocess",
    "inference",
    "postprocess",
    "output",
    "total",
];

/// Opacity of the class colours in overlays (0..255).
pub const OVERLAY_ALPHA: u8 = 120;

/// Why a sink could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A sink description that cannot be parsed.
    #[error("--sink {spec}: {message}")]
    Spec {
        /// The description given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file or folder that cannot be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An output that already holds an earlier run's results.
    #[error("{}: {what}; choose another, or pass --overwrite to replace it", path.display())]
    Exists {
        /// The file or folder.
        path: PathBuf,
        /// What is there.
        what: String,
    },
    /// A picture that cannot be encoded.
    #[error("encoding {what}: {source}")]
    Encode {
        /// Which picture.
        what: String,
        /// The encoder's error.
        source: image::ImageError,
    },
    /// The live view could not start.
    #[error(transparent)]
    Live(#[from] LiveError),
    /// A mask too large for the wire protocol.
    #[error("wire protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The pipeline stopped with an error.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Sums of per-stage times over a number of frames.
#[derive(Clone, Debug, Default)]
pub struct StageStats {
    /// Frames summed.
    pub frames: u32,
    /// Summed time of each of [`STAGES`].
    pub sums: [Duration; 6],
    first: Option<Instant>,
}

impl StageStats {
    /// Adds one frame's stage times.
    pub fn add(&mut self, stages: &[Duration; 6]) {
        self.first.get_or_insert_with(Instant::now);
        self.frames += 1;
        for (s, d) in self.sums.iter_mut().zip(stages) {
            *s += *d;
        }
    }

    /// Mean milliseconds of each of [`STAGES`].
    pub fn mean_ms(&self) -> [f64; 6] {
        let n = self.frames.max(1) as f64;
        self.sums.map(|d| d.as_secs_f64() * 1e3 / n)
    }

    /// Frames per second over `over` (the time they took to arrive).
    pub fn fps(&self, over: Duration) -> f64 {
        self.frames as f64 / over.as_secs_f64().max(1e-9)
    }

    /// Frames per second since the first frame added.
    pub fn recent_fps(&self) -> f64 {
        self.fps(self.first.map_or(Duration::ZERO, |t| t.elapsed()))
    }

    /// `12.3 FPS; mean ms: capture 1.0, preprocess 2.0, ...`
    pub fn line(&self, over: Duration) -> String {
        let stages: Vec<String> = STAGES
            .iter()
            .zip(self.mean_ms())
            .map(|(stage, ms)| format!("{stage} {ms:.1}"))
            .collect();
        format!("{:.1} FPS; mean ms: {}", self.fps(over), stages.join(", "))
    }
}

/// An output for segmented frames.
pub enum Sink {
    /// One JSON object per frame.
    Jsonl(Box<dyn Write + Send>),
    /// One PNG per frame into a folder.
    Png {
        /// The folder.
        dir: PathBuf,
        /// What each PNG shows.
        kind: PngKind,
    },
    /// An animated GIF of the overlays, renamed into place when the stream ends.
    Gif(Box<GifSink>),
    /// The overlays as concatenated JPEGs.
    Mjpeg {
        /// The file.
        path: PathBuf,
        /// The open file.
        out: std::io::BufWriter<std::fs::File>,
    },
    /// The live view.
    Http(LiveView),
    /// The wire protocol over TCP, UDP or a serial line.
    Protocol(Sender),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Jsonl(_) => f.write_str("Jsonl"),
            Sink::Png { dir, kind } => write!(f, "Png({kind:?}, {})", dir.display()),
            Sink::Gif(g) => g.fmt(f),
            Sink::Mjpeg { path, .. } => write!(f, "Mjpeg({})", path.display()),
            Sink::Http(v) => write!(f, "Http({})", v.addr()),
            Sink::Protocol(_) => f.write_str("Protocol"),
        }
    }
}

/// What a PNG sink writes for each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PngKind {
    /// The class ids, 8-bit grey.
    Mask,
    /// The class colours.
    Color,
    /// The frame at its own size with the class colours blended over it (the
    /// mask scaled up, nearest neighbour).
    Overlay,
    /// The frame as captured, at its own size.
    Frame,
}

/// An animated GIF being written to a temporary file.
pub struct GifSink {
    path: PathBuf,
    encoder: image::codecs::gif::GifEncoder<std::io::BufWriter<std::fs::File>>,
    tmp: tempfile::NamedTempFile,
}

impl std::fmt::Debug for GifSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GifSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Parses and opens a sink description (see the module documentation).
    /// An output file that exists, or a picture folder that already holds
    /// frame pictures, is refused: see [`Sink::open_replacing`].
    pub fn open(spec: &str) -> Result<Sink, SinkError> {
        Sink::open_with(spec, false)
    }

    /// Like [`Sink::open`], but replaces existing output files, and removes
    /// the frame pictures (`NNNNNN.png`) an earlier run left in a picture
    /// folder (other files stay).
    pub fn open_replacing(spec: &str) -> Result<Sink, SinkError> {
        Sink::open_with(spec, true)
    }

    fn open_with(spec: &str, replace: bool) -> Result<Sink, SinkError> {
        let bad = |message: &str| SinkError::Spec {
            spec: spec.into(),
            message: message.into(),
        };
        let Some((kind, arg)) = spec.split_once(':') else {
            return Err(bad("expected KIND:WHERE"));
        };
        if arg.is_empty() {
            return Err(bad("nothing after the colon"));
        }
        // A file output: refused if it exists, unless replacing.
        let fresh = |path: &Path| -> Result<(), SinkError> {
            if !replace && path.exists() {
                return Err(SinkError::Exists {
                    path: path.to_path_buf(),
                    what: "exists".into(),
                });
            }
            Ok(())
        };
        let folder = |kind: PngKind| -> Result<Sink, SinkError> {
            let dir = PathBuf::from(arg);
            std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
            crate::fsio::remove_stale(&dir);
            let pictures: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(io_at(&dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_frame_picture(p))
                .collect();
            if let Some(first) = pictures.first() {
                if !replace {
                    return Err(SinkError::Exists {
                        path: dir.clone(),
                        what: format!(
                            "holds {} frame pictures of an earlier run (such as {})",
                            pictures.len(),
                            first.file_name().unwrap_or_default().to_string_lossy()
                        ),
                    });
                }
                for p in &pictures {
                    std::fs::remove_file(p).map_err(io_at(p))?;
                }
            }
            Ok(Sink::Png { dir, kind })
        };
        Ok(match kind {
            "jsonl" if arg == "-" => Sink::Jsonl(Box::new(std::io::stdout())),
            "jsonl" => {
                let path = Path::new(arg);
                fresh(path)?;
                let file = std::fs::File::create(path).map_err(io_at(path))?;
                Sink::Jsonl(Box::new(std::io::BufWriter::new(file)))
            }
            "png" => folder(PngKind::Mask)?,
            "color" => folder(PngKind::Color)?,
            "overlay" => folder(PngKind::Overlay)?,
            "frames" => folder(PngKind::Frame)?,
            "gif" => {
                let path = PathBuf::from(arg);
                fresh(&path)?;
                let dir = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
                crate::fsio::remove_stale(&dir);
                let tmp = crate::fsio::builder()
                    .suffix(".gif.tmp")
                    .tempfile_in(&dir)
                    .map_err(io_at(&dir))?;
                let file = tmp.reopen().map_err(io_at(tmp.path()))?;
                let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(
                    std::io::BufWriter::new(file),
                    10,
                );
                encoder
                    .set_repeat(image::codecs::gif::Repeat::Infinite)
                    .map_err(|source| SinkError::Encode {
                        what: path.display().to_string(),
                        source,
                    })?;
                Sink::Gif(Box::new(GifSink { path, encoder, tmp }))
            }
            "mjpeg" => {
                let path = PathBuf::from(arg);
                fresh(&path)?;
                let file = std::fs::File::create(&path).map_err(io_at(&path))?;
                Sink::Mjpeg {
                    path,
                    out: std::io::BufWriter::new(file),
                }
            }
            "http" => Sink::Http(LiveView::start(arg)?),
            "tcp" => Sink::Protocol(Sender::start(Target::Tcp(arg.into()))),
            "udp" => Sink::Protocol(Sender::start(Target::Udp(arg.into()))),
            "serial" => {
                // Open once now so a wrong path is reported before the first frame.
                let path = Path::new(arg);
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_at(path))?;
                Sink::Protocol(Sender::start(Target::Serial(arg.into())))
            }
            _ => {
                return Err(bad(
                    "unknown kind; expected jsonl, png, color, overlay, frames, gif, mjpeg, http, tcp, udp or serial",
                ));
            }
        })
    }

    fn needs_overlay(&self) -> bool {
        matches!(self, Sink::Gif(_) | Sink::Mjpeg { .. } | Sink::Http(_))
    }

    fn needs_jpeg(&self) -> bool {
        matches!(self, Sink::Mjpeg { .. } | Sink::Http(_))
    }

    /// Ends the sink: flushes files and renames the GIF into place. Returns a
    /// line for the user where there is something to say.
    pub fn finish(self) -> Result<Option<String>, SinkError> {
        match self {
            Sink::Jsonl(mut out) => {
                out.flush().map_err(io_at(Path::new("jsonl sink")))?;
                Ok(None)
            }
            Sink::Gif(gif) => {
                let GifSink { path, encoder, tmp } = *gif;
                // Dropping the encoder writes the GIF trailer and flushes the file.
                drop(encoder);
                tmp.as_file().sync_data().map_err(io_at(&path))?;
                tmp.persist(&path).map_err(|e| SinkError::Io {
                    path: path.clone(),
                    source: e.error,
                })?;
                Ok(Some(format!("wrote {}", path.display())))
            }
            Sink::Mjpeg { path, mut out } => {
                out.flush().map_err(io_at(&path))?;
                Ok(Some(format!("wrote {}", path.display())))
            }
            Sink::Protocol(sender) => {
                let (sent, dropped) = sender.finish();
                Ok(Some(format!(
                    "protocol sink: {sent} frames sent, {dropped} dropped"
                )))
            }
            Sink::Png { .. } | Sink::Http(_) => Ok(None),
        }
    }
}

/// What every sink may need about the current frame.
struct FrameContext<'a> {
    item: &'a Segmented,
    info: &'a ModelInfo,
    mask_size: Size,
    counts: &'a [u64],
    overlay: &'a [u8],
    jpeg: &'a [u8],
    outputs_started: Instant,
    recent: &'a StageStats,
    run_started: Instant,
}

impl FrameContext<'_> {
    fn fraction(&self, count: u64) -> f64 {
        count as f64 / self.item.mask.len().max(1) as f64
    }

    fn fractions(&self) -> impl Iterator<Item = (String, f64)> + '_ {
        self.info
            .class_names
            .iter()
            .zip(self.counts)
            .map(|(n, &c)| (n.clone(), self.fraction(c)))
    }
}

fn encode_png(
    what: &Path,
    size: Size,
    color: image::ExtendedColorType,
    pixels: &[u8],
) -> Result<Vec<u8>, SinkError> {
    use image::ImageEncoder;
    use image::codecs::png::CompressionType;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        // Masks compress well quickly; pictures are worth the time.
        if color == image::ExtendedColorType::L8 {
            CompressionType::Fast
        } else {
            CompressionType::Default
        },
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(pixels, size.width, size.height, color)
    .map_err(|source| SinkError::Encode {
        what: what.display().to_string(),
        source,
    })?;
    Ok(png)
}

/// The frame at `size` with the class colours over it; frame and mask are
/// both resampled (nearest) to `size`.
fn overlay_at(item: &Segmented, size: Size, info: &ModelInfo) -> Vec<u8> {
    let mut rgb = frame_rgb(item, size);
    let mask_size = info.input_size;
    let (w, h) = (size.width as usize, size.height as usize);
    let (mw, mh) = (mask_size.width as usize, mask_size.height as usize);
    let scaled;
    let mask = if (w, h) == (mw, mh) {
        &item.mask[..]
    } else {
        scaled = (0..h)
            .flat_map(|y| (0..w).map(move |x| (y * mh / h) * mw + x * mw / w))
            .map(|i| item.mask[i])
            .collect::<Vec<u8>>();
        &scaled[..]
    };
    crate::post::overlay(&mut rgb, mask, &info.palette, OVERLAY_ALPHA, info.void)
        .expect("sized for the frame");
    rgb
}

/// Whether `path` is named like the pictures a picture sink writes
/// (`000042.png`).
fn is_frame_picture(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".png"))
        .is_some_and(|stem| stem.len() >= 6 && stem.bytes().all(|b| b.is_ascii_digit()))
}

/// The frame resampled (nearest) to `size` as packed RGB.
fn frame_rgb(item: &Segmented, size: Size) -> Vec<u8> {
    let frame = item.frame.frame();
    let (w, h) = (size.width as usize, size.height as usize);
    let (fw, fh) = (frame.size().width as usize, frame.size().height as usize);
    let mut rgb = Vec::with_capacity(3 * w * h);
    for y in 0..h {
        for x in 0..w {
            rgb.extend_from_slice(&frame.rgb(x * fw / w, y * fh / h));
        }
    }
    rgb
}

impl Sink {
    fn write(&mut self, cx: &FrameContext<'_>) -> Result<(), SinkError> {
        let item = cx.item;
        let mask = &item.mask;
        match self {
            Sink::Png { dir, kind } => {
                let path = dir.join(format!("{:06}.png", item.seq));
                let png = match kind {
                    PngKind::Mask => {
                        encode_png(&path, cx.mask_size, image::ExtendedColorType::L8, mask)?
                    }
                    PngKind::Color => {
                        let mut rgb = vec![0; 3 * mask.len()];
                        crate::post::colorize(mask, &cx.info.palette, &mut rgb)
                            .expect("sized for the mask");
                        encode_png(&path, cx.mask_size, image::ExtendedColorType::Rgb8, &rgb)?
                    }
                    PngKind::Overlay => {
                        let size = item.frame.size;
                        let rgb = overlay_at(item, size, cx.info);
                        encode_png(&path, size, image::ExtendedColorType::Rgb8, &rgb)?
                    }
                    PngKind::Frame => {
                        let size = item.frame.size;
                        let rgb = frame_rgb(item, size);
                        encode_png(&path, size, image::ExtendedColorType::Rgb8, &rgb)?
                    }
                };
                crate::fsio::write_atomic(&path, &png)
                    .map_err(|(path, source)| SinkError::Io { path, source })?;
            }
            Sink::Jsonl(out) => {
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                let fractions: serde_json::Map<String, serde_json::Value> =
                    cx.fractions().map(|(n, f)| (n, f.into())).collect();
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
                let fail = io_at(Path::new("jsonl sink"));
                writeln!(out, "{line}")
                    .and_then(|()| out.flush())
                    .map_err(fail)?;
            }
            Sink::Gif(gif) => {
                let rgba: Vec<u8> = cx
                    .overlay
                    .chunks_exact(3)
                    .flat_map(|p| [p[0], p[1], p[2], 255])
                    .collect();
                let image =
                    image::RgbaImage::from_raw(cx.mask_size.width, cx.mask_size.height, rgba)
                        .expect("sized for the mask");
                let frame = image::Frame::from_parts(
                    image,
                    0,
                    0,
                    image::Delay::from_numer_denom_ms(100, 1),
                );
                gif.encoder
                    .encode_frame(frame)
                    .map_err(|source| SinkError::Encode {
                        what: gif.path.display().to_string(),
                        source,
                    })?;
            }
            Sink::Mjpeg { path, out } => out.write_all(cx.jpeg).map_err(io_at(path))?,
            Sink::Protocol(sender) => {
                let header = FrameHeader {
                    seq: item.seq as u32,
                    timestamp_us: item.started.duration_since(cx.run_started).as_micros() as u64,
                    width: cx.mask_size.width as u16,
                    height: cx.mask_size.height as u16,
                    classes: cx.info.num_classes() as u8,
                    latency_us: item.started.elapsed().as_micros() as u32,
                };
                sender.send(encode_frame(header, mask)?);
            }
            Sink::Http(view) => view.publish(
                cx.jpeg.to_vec(),
                LiveStats {
                    frames: item.seq + 1,
                    dropped: 0,
                    fps: cx.recent.recent_fps(),
                    latency_ms: STAGES
                        .iter()
                        .zip(cx.recent.mean_ms())
                        .map(|(s, ms)| (s.to_string(), ms))
                        .collect(),
                    fractions: cx.fractions().collect(),
                    model: format!("{} {}", cx.info.architecture, cx.info.precision),
                },
            ),
        }
        Ok(())
    }
}

/// How [`stream`] runs.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Stop after this many frames.
    pub limit: u64,
    /// Frames each queue holds.
    pub queue: usize,
    /// Time between calls of the progress callback; `None` for none.
    pub report_every: Option<Duration>,
    /// Frames segmented at once, each by its own copy of the segmenter
    /// ([`Segmenter::fork`]) on its own thread.
    pub workers: usize,
    /// Ends the run early when requested (see [`pipeline::run`]).
    pub stop: Stop,
    /// After a stop, how long a source may take to deliver the frame it is
    /// reading before it is abandoned.
    pub drain: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            limit: u64::MAX,
            queue: 2,
            report_every: Some(Duration::from_secs(5)),
            workers: 1,
            stop: Stop::new(),
            drain: Duration::from_secs(2),
        }
    }
}

/// What a finished stream did.
#[derive(Clone, Debug)]
pub struct StreamSummary {
    /// Frame counters.
    pub totals: RunTotals,
    /// Stage times summed over every frame.
    pub stats: StageStats,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// What the sinks said when they finished (files written, frames sent).
    pub messages: Vec<String>,
}

impl StreamSummary {
    /// Frames delivered per second over the whole run.
    pub fn fps(&self) -> f64 {
        self.stats.fps(self.elapsed)
    }
}

/// Streams `source` through `segmenter` into every sink until the source ends
/// or `options.limit` frames were captured, calling `progress` with the stage
/// times of the last window every `options.report_every`.
pub fn stream(
    source: Box<dyn FrameSource>,
    segmenter: Segmenter,
    mut sinks: Vec<Sink>,
    options: StreamOptions,
    mut progress: impl FnMut(&StageStats, Duration),
) -> Result<StreamSummary, SinkError> {
    let info = segmenter.info().clone();
    let mask_size = segmenter.mask_size();
    let started = Instant::now();
    let need_overlay = sinks.iter().any(Sink::needs_overlay);
    let need_jpeg = sinks.iter().any(Sink::needs_jpeg);
    let mut window = StageStats::default();
    let mut all = StageStats::default();
    let mut recent = StageStats::default();
    let mut last_report = Instant::now();
    let mut counts = vec![0u64; info.num_classes()];
    let output = |item: &Segmented| -> Result<(), SinkError> {
        let outputs_started = Instant::now();
        counts.fill(0);
        for &m in &item.mask {
            if let Some(c) = counts.get_mut(m as usize) {
                *c += 1;
            }
        }
        let overlay = if need_overlay {
            overlay_at(item, mask_size, &info)
        } else {
            Vec::new()
        };
        let mut jpeg = Vec::new();
        if need_jpeg {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
                .encode(
                    &overlay,
                    mask_size.width,
                    mask_size.height,
                    image::ExtendedColorType::Rgb8,
                )
                .map_err(|e| SinkError::Encode {
                    what: "the overlay as JPEG".into(),
                    source: e,
                })?;
        }
        let cx = FrameContext {
            item,
            info: &info,
            mask_size,
            counts: &counts,
            overlay: &overlay,
            jpeg: &jpeg,
            outputs_started,
            recent: &recent,
            run_started: started,
        };
        for sink in &mut sinks {
            sink.write(&cx)?;
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
        for stats in [&mut window, &mut all, &mut recent] {
            stats.add(&stages);
        }
        if recent.frames >= 30 {
            recent = StageStats::default();
        }
        if let Some(every) = options.report_every
            && last_report.elapsed() >= every
        {
            progress(&window, last_report.elapsed());
            window = StageStats::default();
            last_report = Instant::now();
        }
        Ok(())
    };
    let mut segmenters = Vec::with_capacity(options.workers.max(1));
    for _ in 1..options.workers.max(1) {
        segmenters.push(segmenter.fork().map_err(PipelineError::from)?);
    }
    segmenters.push(segmenter);
    let totals = pipeline::run(
        source,
        segmenters,
        options.limit,
        options.queue,
        &options.stop,
        options.drain,
        output,
    )?;
    let elapsed = started.elapsed();
    let messages = sinks
        .into_iter()
        .map(Sink::finish)
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()?;
    Ok(StreamSummary {
        totals,
        stats: all,
        elapsed,
        messages,
    })
}
