//! Where frames come from: raw frames on a pipe (`rpicam-vid -o -`, `ffmpeg -f
//! rawvideo`), a concatenated MJPEG stream, a folder of pictures, or a synthetic
//! drive. Each source reuses one frame buffer.

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use crate::Size;
use crate::frame::{Frame, PixelFormat};
use crate::size::frame_size;

#[cfg(feature = "v4l2")]
mod v4l2;
#[cfg(feature = "v4l2")]
pub use v4l2::V4l2Source;

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A source description that cannot be parsed.
    #[error("source {spec:?}: {what}")]
    Spec {
        /// The description given.
        spec: String,
        /// What is wrong with it.
        what: String,
    },
    /// Reading failed.
    #[error("{what}: {source}")]
    Io {
        /// The file or stream.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A picture that cannot be decoded (folder sources; streams skip them).
    #[error("{}: {message}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's explanation.
        message: String,
    },
}

/// A frame owned by its source.
#[derive(Clone, Debug)]
pub struct OwnedFrame {
    /// Layout.
    pub format: PixelFormat,
    /// Size.
    pub size: Size,
    /// First-plane row stride in bytes.
    pub stride: usize,
    /// The bytes.
    pub data: Vec<u8>,
}

impl OwnedFrame {
    /// An RGB frame holding `image`.
    pub fn from_rgb(image: image::RgbImage) -> OwnedFrame {
        OwnedFrame {
            format: PixelFormat::Rgb8,
            size: Size::new(image.width(), image.height()),
            stride: 3 * image.width() as usize,
            data: image.into_raw(),
        }
    }

    /// Becomes a copy of `other`, reusing this frame's buffer.
    pub fn copy_from(&mut self, other: &OwnedFrame) {
        self.format = other.format;
        self.size = other.size;
        self.stride = other.stride;
        self.data.clear();
        self.data.extend_from_slice(&other.data);
    }

    /// A borrowed view.
    pub fn frame(&self) -> Frame<'_> {
        Frame::new(self.format, self.size, self.stride, &self.data)
            .expect("sources make consistent frames")
    }
}

/// Counters a source keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Frames delivered.
    pub frames: u64,
    /// Frames skipped because they could not be decoded.
    pub corrupt: u64,
    /// Bytes of an incomplete last frame, dropped at the end of the stream.
    pub truncated_bytes: u64,
    /// Bytes between pictures that belong to none (an MJPEG stream's junk).
    pub skipped_bytes: u64,
    /// Times a camera that went away was reopened ([`Reopening`]).
    pub reopened: u64,
}

impl SourceStats {
    fn add(&mut self, other: SourceStats) {
        self.frames += other.frames;
        self.corrupt += other.corrupt;
        self.truncated_bytes += other.truncated_bytes;
        self.skipped_bytes += other.skipped_bytes;
        self.reopened += other.reopened;
    }
}

/// A stream of frames.
pub trait FrameSource: Send {
    /// The next frame, or `None` at the end of the stream.
    fn next_frame(&mut self) -> Result<Option<&OwnedFrame>, SourceError>;
    /// Counters so far.
    fn stats(&self) -> SourceStats;
    /// Whether frames arrive in real time (a camera or a pipe), so that a slow
    /// consumer should drop frames rather than make the source wait.
    fn is_live(&self) -> bool {
        false
    }
}

/// Raw frames of a fixed format and size back to back on a reader.
#[derive(Debug)]
pub struct RawSource<R> {
    reader: R,
    frame: OwnedFrame,
    stats: SourceStats,
    what: String,
    live: bool,
}

impl<R: Read + Send> RawSource<R> {
    /// Frames of `format` and `size` with the camera stride
    /// ([`PixelFormat::camera_stride`]) read from `reader`, named `what` in errors.
    pub fn new(reader: R, format: PixelFormat, size: Size, what: &str) -> RawSource<R> {
        let stride = format.camera_stride(size.width);
        RawSource {
            reader,
            frame: OwnedFrame {
                format,
                size,
                stride,
                data: vec![0; format.frame_len(size.height, stride)],
            },
            stats: SourceStats::default(),
            what: what.into(),
            live: false,
        }
    }

    /// Marks the stream as live (a camera pipe): see [`FrameSource::is_live`].
    pub fn live(mut self, live: bool) -> Self {
        self.live = live;
        self
    }
}

impl<R: Read + Send> FrameSource for RawSource<R> {
    fn is_live(&self) -> bool {
        self.live
    }

    fn next_frame(&mut self) -> Result<Option<&OwnedFrame>, SourceError> {
        let buf = &mut self.frame.data;
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SourceError::Io {
                        what: self.what.clone(),
                        source,
                    });
                }
            }
        }
        if filled < buf.len() {
            self.stats.truncated_bytes += filled as u64;
            return Ok(None);
        }
        self.stats.frames += 1;
        Ok(Some(&self.frame))
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }
}

/// JPEG pictures back to back on a reader, as `rpicam-vid --codec mjpeg -o -`
/// writes them. A picture that does not decode is skipped and counted.
#[derive(Debug)]
pub struct MjpegSource<R> {
    live: bool,
    reader: R,
    splitter: crate::mjpeg::Splitter,
    eof: bool,
    frame: OwnedFrame,
    stats: SourceStats,
    what: String,
}

impl<R: Read + Send> MjpegSource<R> {
    /// Reads JPEGs from `reader`, named `what` in errors.
    pub fn new(reader: R, what: &str) -> MjpegSource<R> {
        MjpegSource {
            live: false,
            reader,
            splitter: crate::mjpeg::Splitter::default(),
            eof: false,
            frame: OwnedFrame::from_rgb(image::RgbImage::new(1, 1)),
            stats: SourceStats::default(),
            what: what.into(),
        }
    }

    /// Marks the stream as live (a camera pipe): see [`FrameSource::is_live`].
    pub fn live(mut self, live: bool) -> Self {
        self.live = live;
        self
    }

    /// The next complete JPEG in the stream, if any (see
    /// [`crate::mjpeg::Splitter`]).
    fn next_jpeg(&mut self) -> Result<Option<Vec<u8>>, SourceError> {
        loop {
            if let Some(jpeg) = self.splitter.next_jpeg() {
                return Ok(Some(jpeg));
            }
            if self.eof {
                self.stats.truncated_bytes += self.splitter.finish() as u64;
                return Ok(None);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.reader.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.splitter.push(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SourceError::Io {
                        what: self.what.clone(),
                        source,
                    });
                }
            }
        }
    }
}

impl<R: Read + Send> FrameSource for MjpegSource<R> {
    fn is_live(&self) -> bool {
        self.live
    }

    fn next_frame(&mut self) -> Result<Option<&OwnedFrame>, SourceError> {
        while let Some(jpeg) = self.next_jpeg()? {
            match image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg) {
                Ok(img) => {
                    self.frame = OwnedFrame::from_rgb(img.into_rgb8());
                    self.stats.frames += 1;
                    return Ok(Some(&self.frame));
                }
                Err(_) => self.stats.corrupt += 1,
            }
        }
        Ok(None)
    }

    fn stats(&self) -> SourceStats {
        SourceStats {
            corrupt: self.stats.corrupt + self.splitter.corrupt,
            skipped_bytes: self.splitter.skipped_bytes,
            ..self.stats
        }
    }
}

/// File name extensions of the pictures edgeseg reads (the formats its
/// `image` build decodes), in lower case.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `path` names a picture edgeseg reads ([`IMAGE_EXTENSIONS`], any
/// case).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The PNG and JPEG files directly in `dir`, sorted by name.
pub fn image_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_image_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Pictures of a folder in name order.
#[derive(Debug)]
pub struct DirSource {
    files: std::vec::IntoIter<PathBuf>,
    frame: OwnedFrame,
    stats: SourceStats,
}

impl DirSource {
    /// The PNG and JPEG files of `dir`.
    pub fn new(dir: &Path) -> Result<DirSource, SourceError> {
        let files = image_files(dir).map_err(|source| SourceError::Io {
            what: dir.display().to_string(),
            source,
        })?;
        if files.is_empty() {
            return Err(SourceError::Spec {
                spec: dir.display().to_string(),
                what: "the folder holds no PNG or JPEG pictures".into(),
            });
        }
        Ok(DirSource {
            files: files.into_iter(),
            frame: OwnedFrame::from_rgb(image::RgbImage::new(1, 1)),
            stats: SourceStats::default(),
        })
    }
}

impl FrameSource for DirSource {
    fn next_frame(&mut self) -> Result<Option<&OwnedFrame>, SourceError> {
        let Some(path) = self.files.next() else {
            return Ok(None);
        };
        let img = image::open(&path).map_err(|e| SourceError::Image {
            path: path.clone(),
            message: e.to_string(),
        })?;
        self.frame = OwnedFrame::from_rgb(img.into_rgb8());
        self.stats.frames += 1;
        Ok(Some(&self.frame))
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }
}

/// A drive through synthetic road scenes.
#[derive(Debug)]
pub struct SyntheticSource {
    drive: crate::synth::Drive,
    index: u64,
    frame: OwnedFrame,
    labels: Vec<u8>,
    stats: SourceStats,
}

impl SyntheticSource {
    /// Frames of `size` from the drive with `seed`.
    pub fn new(size: Size, seed: u64) -> SyntheticSource {
        SyntheticSource {
            drive: crate::synth::Drive::new(seed),
            index: 0,
            frame: OwnedFrame {
                format: PixelFormat::Rgb8,
                size,
                stride: 3 * size.width as usize,
                data: vec![0; 3 * size.area()],
            },
            labels: vec![0; size.area()],
            stats: SourceStats::default(),
        }
    }

    /// The ground-truth labels of the last frame.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
}

impl FrameSource for SyntheticSource {
    fn next_frame(&mut self) -> Result<Option<&OwnedFrame>, SourceError> {
        let size = self.frame.size;
        self.drive
            .render_frame(
                self.index,
                size.width as usize,
                size.height as usize,
                &mut self.frame.data,
                &mut self.labels,
            )
            .map_err(|e| SourceError::Spec {
                spec: "synthetic".into(),
                what: e.to_string(),
            })?;
        self.index += 1;
        self.stats.frames += 1;
        Ok(Some(&self.frame))
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }
}

/// How long [`Reopening`] waits before reopening: doubling from `min` to
/// `max` while attempts keep failing, back to `min` after a frame arrives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// First wait.
    pub min: std::time::Duration,
    /// Longest wait.
    pub max: std::time::Duration,
    /// Consecutive failures (no frame in between) before giving up; `None`
    /// for never.
    pub give_up_after: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: std::time::Duration::from_millis(250),
            max: std::time::Duration::from_secs(10),
            give_up_after: None,
        }
    }
}

/// Opens a camera source again and again.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn FrameSource>, SourceError> + Send>;

/// A camera that may go away (a process that exits, a device unplugged): when
/// the stream ends or fails, or cannot be opened, it is reopened after a
/// [`Backoff`], and frames carry on. Each reopening is reported through the
/// callback and counted in [`SourceStats::reopened`].
pub struct Reopening {
    open: Opener,
    inner: Option<Box<dyn FrameSource>>,
    frame: OwnedFrame,
    backoff: Backoff,
    wait: std::time::Duration,
    failures: u32,
    past: SourceStats,
    report: Box<dyn FnMut(&str) + Send>,
    sleep: fn(std::time::Duration),
}

impl std::fmt::Debug for Reopening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopening")
            .field("backoff", &self.backoff)
            .field("failures", &self.failures)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Reopening {
    /// A source that calls `open` for the camera and again whenever it goes
    /// away; `report` hears a line each time.
    pub fn new(open: Opener, backoff: Backoff, report: Box<dyn FnMut(&str) + Send>) -> Reopening {
        Reopening {
            open,
            inner: None,
            frame: OwnedFrame {
                format: PixelFormat::Rgb8,
                size: Size::new(0, 0),
                stride: 0,
                data: Vec::new(),
            },
            backoff,
            wait: backoff.min,
            failures: 0,
            past: SourceStats::default(),
            report,
            sleep: std::thread::sleep,
        }
    }

    /// Replaces the sleep between attempts (tests record it instead).
    pub fn with_sleep(mut self, sleep: fn(std::time::Duration)) -> Self {
        self.sleep = sleep;
        self
    }

    /// Counts a failure, gives up if there were too many, else waits.
    fn failed(&mut self, why: String) -> Result<(), SourceError> {
        if let Some(inner) = self.inner.take() {
            self.past.add(inner.stats());
        }
        self.failures += 1;
        if self
            .backoff
            .give_up_after
            .is_some_and(|n| self.failures > n)
        {
            return Err(SourceError::Io {
                what: "camera".into(),
                source: std::io::Error::other(format!(
                    "{why}; giving up after {} attempts without a frame",
                    self.failures
                )),
            });
        }
        (self.report)(&format!(
            "camera: {why}; reopening in {:.2} s",
            self.wait.as_secs_f64()
        ));
        (self.sleep)(self.wait);
        self.wait = (self.wait * 2).min(self.backoff.max);
        self.past.reopened += 1;
        Ok(())
    }
}

impl FrameSource for Reopening {
    fn next_frame(&mut self) -> Result<Option<&OwnedFrame>, SourceError> {
        loop {
            let inner = match &mut self.inner {
                Some(inner) => inner,
                None => match (self.open)() {
                    Ok(inner) => self.inner.insert(inner),
                    Err(e) => {
                        self.failed(format!("cannot open: {e}"))?;
                        continue;
                    }
                },
            };
            match inner.next_frame() {
                Ok(Some(frame)) => {
                    // Copied into our own buffer (no allocation once sized), so
                    // the camera can be replaced while the frame is in use.
                    self.frame.copy_from(frame);
                    self.failures = 0;
                    self.wait = self.backoff.min;
                    return Ok(Some(&self.frame));
                }
                Ok(None) => self.failed("the stream ended".into())?,
                Err(e) => self.failed(e.to_string())?,
            }
        }
    }

    fn stats(&self) -> SourceStats {
        let mut stats = self.past;
        if let Some(inner) = &self.inner {
            stats.add(inner.stats());
        }
        stats
    }

    fn is_live(&self) -> bool {
        true
    }
}

/// The standard output of a camera command (`rpicam-vid ... -o -`), killed
/// when dropped.
#[derive(Debug)]
pub struct CommandOutput {
    child: std::process::Child,
    stdout: std::process::ChildStdout,
}

impl CommandOutput {
    /// Runs `command` with `sh -c`, its standard output piped to us.
    pub fn spawn(command: &str) -> Result<CommandOutput, SourceError> {
        let mut child = std::process::Command::new("sh")
            .args(["-c", command])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| SourceError::Io {
                what: format!("running {command:?}"),
                source,
            })?;
        let stdout = child.stdout.take().expect("piped");
        Ok(CommandOutput { child, stdout })
    }
}

impl Read for CommandOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl Drop for CommandOutput {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a source whose bytes come from a camera command instead of standard
/// input (`stdin:FORMAT:WxH` or `mjpeg:-` specs), restarting the command with
/// [`Backoff`] whenever it exits; `report` hears each restart.
pub fn open_command(
    spec: &str,
    command: &str,
    backoff: Backoff,
    report: Box<dyn FnMut(&str) + Send>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    let bad = |what: &str| SourceError::Spec {
        spec: spec.into(),
        what: what.into(),
    };
    let parts: Vec<&str> = spec.splitn(3, ':').collect();
    let reader: Box<dyn Fn(CommandOutput) -> Box<dyn FrameSource> + Send> = match parts[..] {
        ["stdin", format, size] => {
            let format = PixelFormat::from_name(format).ok_or_else(|| bad(FORMATS))?;
            let size = frame_size(size).map_err(|e| bad(&e))?;
            let what = format!("{command:?}");
            Box::new(move |out| Box::new(RawSource::new(out, format, size, &what).live(true)))
        }
        ["mjpeg", "-"] => {
            let what = format!("{command:?}");
            Box::new(move |out| {
                Box::new(MjpegSource::new(std::io::BufReader::new(out), &what).live(true))
            })
        }
        _ => {
            return Err(bad(
                "a camera command feeds stdin:FORMAT:WxH or mjpeg:- sources",
            ));
        }
    };
    let command = command.to_string();
    let open: Opener = Box::new(move || Ok(reader(CommandOutput::spawn(&command)?)));
    Ok(Box::new(Reopening::new(open, backoff, report)))
}

/// Opens a camera that is reopened with `backoff` when it goes away:
/// `v4l2:/dev/videoN[:WxH]` (640x480 unless given; needs the `v4l2` cargo
/// feature), or any `stdin:FORMAT:WxH` / `mjpeg:-` spec fed by the camera
/// command `exec` (see [`open_command`]); `report` hears each reopening.
pub fn open_camera(
    spec: &str,
    exec: Option<&str>,
    backoff: Backoff,
    report: Box<dyn FnMut(&str) + Send>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    if let Some(command) = exec {
        return open_command(spec, command, backoff, report);
    }
    let bad = |what: &str| SourceError::Spec {
        spec: spec.into(),
        what: what.into(),
    };
    let parts: Vec<&str> = spec.splitn(3, ':').collect();
    let (path, size) = match parts[..] {
        ["v4l2", path] => (path.to_string(), Size::new(640, 480)),
        ["v4l2", path, size] => (path.to_string(), frame_size(size).map_err(|e| bad(&e))?),
        _ => return open(spec, 0),
    };
    #[cfg(feature = "v4l2")]
    {
        // Fail now, not in a loop, if the device is not there at all.
        let first = V4l2Source::open(&path, size)?;
        let mut first = Some(first);
        let open: Opener = Box::new(move || match first.take() {
            Some(source) => Ok(Box::new(source) as Box<dyn FrameSource>),
            None => Ok(Box::new(V4l2Source::open(&path, size)?)),
        });
        Ok(Box::new(Reopening::new(open, backoff, report)))
    }
    #[cfg(not(feature = "v4l2"))]
    {
        let _ = (path, size, backoff, report);
        Err(bad(
            "this build has no V4L2 support: build edgeseg-run with `--features v4l2`, or pipe the camera through ffmpeg into stdin:FORMAT:WxH",
        ))
    }
}

const FORMATS: &str = "formats: rgb, bgr, yuv420, nv12, yuyv, gray";

/// Opens a source from its command-line description:
/// `synthetic[:WxH]`, `stdin:rgb:WxH`, `stdin:yuv420:WxH`, `stdin:nv12:WxH`,
/// `stdin:yuyv:WxH`, `mjpeg:PATH` or `mjpeg:-`, `dir:PATH`.
pub fn open(spec: &str, seed: u64) -> Result<Box<dyn FrameSource>, SourceError> {
    let bad = |what: &str| SourceError::Spec {
        spec: spec.into(),
        what: what.into(),
    };
    let size = |s: &str| frame_size(s).map_err(|e| bad(&e));
    let parts: Vec<&str> = spec.splitn(3, ':').collect();
    match parts[..] {
        ["synthetic"] => Ok(Box::new(SyntheticSource::new(Size::new(480, 360), seed))),
        ["synthetic", s] => Ok(Box::new(SyntheticSource::new(size(s)?, seed))),
        ["stdin", format, s] => {
            let format = PixelFormat::from_name(format).ok_or_else(|| bad(FORMATS))?;
            Ok(Box::new(
                RawSource::new(std::io::stdin(), format, size(s)?, "standard input").live(true),
            ))
        }
        // A pipe is a camera (`rpicam-vid --codec mjpeg -o - | edgeseg-run`):
        // live, like `stdin:`, so a slow model drops frames instead of lagging.
        ["mjpeg", "-"] => Ok(Box::new(
            MjpegSource::new(std::io::stdin(), "standard input").live(true),
        )),
        ["mjpeg", path] => {
            let file = std::fs::File::open(path).map_err(|source| SourceError::Io {
                what: path.into(),
                source,
            })?;
            Ok(Box::new(MjpegSource::new(
                std::io::BufReader::new(file),
                path,
            )))
        }
        ["dir", path] => Ok(Box::new(DirSource::new(Path::new(path))?)),
        ["v4l2", ..] => Err(bad("a camera: open it with open_camera")),
        _ => Err(bad(
            "expected synthetic[:WxH], stdin:FORMAT:WxH, mjpeg:PATH|-, dir:PATH or v4l2:/dev/videoN[:WxH]",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scene(w: u32, h: u32, seed: u64) -> image::RgbImage {
        let (mut rgb, mut labels) = (vec![0; 3 * (w * h) as usize], vec![0; (w * h) as usize]);
        crate::synth::render_scene(seed, w as usize, h as usize, &mut rgb, &mut labels).unwrap();
        image::RgbImage::from_raw(w, h, rgb).unwrap()
    }

    /// A camera that fails to open, ends, comes back and then is gone for
    /// good: frames carry on, waits double and reset, and it gives up when told.
    #[test]
    fn reopening_backs_off_and_carries_on() {
        use std::sync::Mutex;
        use std::time::Duration;
        static SLEPT: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
        let size = Size::new(8, 6);
        let frame_len = PixelFormat::I420.frame_len(6, PixelFormat::I420.camera_stride(8));
        let mut calls = 0;
        let open: Opener = Box::new(move || {
            calls += 1;
            let frames = match calls {
                2 => 2,
                3 => 1,
                _ => {
                    return Err(SourceError::Io {
                        what: "camera".into(),
                        source: std::io::ErrorKind::NotFound.into(),
                    });
                }
            };
            let bytes: Vec<u8> = (0..frames * frame_len).map(|i| (i % 200) as u8).collect();
            let raw = RawSource::new(std::io::Cursor::new(bytes), PixelFormat::I420, size, "cam");
            Ok(Box::new(raw) as Box<dyn FrameSource>)
        });
        let lines = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        let report = {
            let lines = lines.clone();
            Box::new(move |l: &str| lines.lock().unwrap().push(l.to_string()))
        };
        let backoff = Backoff {
            give_up_after: Some(3),
            ..Backoff::default()
        };
        let mut source =
            Reopening::new(open, backoff, report).with_sleep(|d| SLEPT.lock().unwrap().push(d));
        for _ in 0..3 {
            let frame = source.next_frame().unwrap().unwrap();
            assert_eq!((frame.size, frame.data.len()), (size, frame_len));
        }
        let err = source.next_frame().unwrap_err().to_string();
        assert!(err.contains("giving up after 4 attempts"), "{err}");
        let ms: Vec<u128> = SLEPT
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [250, 250, 250, 500, 1000]);
        let stats = source.stats();
        assert_eq!((stats.frames, stats.reopened), (3, 5));
        let lines = lines.lock().unwrap();
        assert!(
            lines[0].contains("cannot open") && lines[1].contains("ended"),
            "{lines:?}"
        );
    }

    #[test]
    fn raw_stream_ends_cleanly_on_a_truncated_frame() {
        let size = Size::new(64, 48);
        let frame_len = PixelFormat::I420.frame_len(48, 64);
        let mut bytes: Vec<u8> = (0..3 * frame_len).map(|i| (i % 251) as u8).collect();
        bytes.truncate(2 * frame_len + 100);
        let mut source = RawSource::new(&bytes[..], PixelFormat::I420, size, "test");
        let first = source.next_frame().unwrap().unwrap().data.clone();
        assert_eq!(first, bytes[..frame_len]);
        assert!(source.next_frame().unwrap().is_some());
        assert!(source.next_frame().unwrap().is_none());
        let stats = source.stats();
        assert_eq!((stats.frames, stats.truncated_bytes), (2, 100));
    }

    fn jpeg(seed: u64) -> Vec<u8> {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&scene(80, 60, seed))
            .unwrap();
        jpeg
    }

    /// Decodes every frame of `stream`: the frames (as RGB bytes) and the stats.
    fn split(stream: &[u8]) -> (Vec<Vec<u8>>, SourceStats) {
        let mut source = MjpegSource::new(stream, "test");
        let mut frames = Vec::new();
        while let Some(f) = source.next_frame().unwrap() {
            frames.push(f.data.clone());
        }
        (frames, source.stats())
    }

    #[test]
    fn absurd_frame_sizes_are_clear_errors() {
        for spec in [
            "stdin:rgb:100000x100000",
            "stdin:yuv420:4294967295x4294967295",
            "synthetic:20000x10",
            "stdin:rgb:16384x16384",
        ] {
            let err = open(spec, 0).err().expect(spec).to_string();
            assert!(err.contains("larger than a camera frame"), "{spec}: {err}");
        }
        assert!(open("stdin:rgb:0x10", 0).is_err());
        assert!(open("stdin:rgb:7680x4320", 0).is_ok());
    }

    #[test]
    fn a_picture_cut_short_by_the_next_hides_nothing() {
        // A camera restarted mid-frame: a whole picture, the first half of
        // one, and a whole one. Both whole pictures come out intact.
        let (a, b, c) = (jpeg(0), jpeg(1), jpeg(2));
        let alone = |j: &[u8]| split(j).0.remove(0);
        let same = |a: &[Vec<u8>], b: &[Vec<u8>]| a == b;
        for cut in [b.len() / 2, 5, b.len() - 2] {
            let stream = [&a[..], &b[..cut], &c[..]].concat();
            let (frames, stats) = split(&stream);
            assert!(same(&frames, &[alone(&a), alone(&c)]), "cut at {cut}");
            assert_eq!((stats.frames, stats.corrupt), (2, 1), "cut at {cut}");
        }
        // Junk between pictures is skipped and counted.
        let stream = [&b"junk"[..], &a, &[0x00, 0xFF, 0x12], &c].concat();
        let (frames, stats) = split(&stream);
        assert_eq!(frames.len(), 2);
        assert_eq!((stats.corrupt, stats.skipped_bytes), (0, 7));
    }

    #[test]
    fn markers_inside_a_segment_do_not_split_a_picture() {
        // An EXIF-style thumbnail: a whole JPEG inside an APP1 segment.
        let (thumb, main) = (jpeg(3), jpeg(4));
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
        segment.extend_from_slice(&thumb);
        let with_thumb = [&main[..2], &segment, &main[2..]].concat();
        let (frames, stats) = split(&[&with_thumb[..], &main].concat());
        assert_eq!((stats.frames, stats.corrupt), (2, 0));
        assert!(frames[0] == frames[1], "the thumbnail is not a frame");
    }

    #[test]
    fn input_without_markers_keeps_memory_bounded() {
        use crate::mjpeg::{MAX_JPEG_BYTES, Splitter};
        // A start of image and scan header, then entropy-coded-looking bytes
        // that never end: skipped once past the limit, then a good picture.
        let mut stream = vec![0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02];
        stream.resize(MAX_JPEG_BYTES + (4 << 20), 0x5A);
        // Then bytes that hold no marker at all.
        stream.resize(stream.len() + (40 << 20), 0x00);
        let good = jpeg(5);
        stream.extend_from_slice(&good);
        let started = std::time::Instant::now();
        let (mut splitter, mut pictures, mut peak) = (Splitter::default(), Vec::new(), 0);
        for chunk in stream.chunks(64 << 10) {
            splitter.push(chunk);
            peak = peak.max(splitter.held());
            while let Some(picture) = splitter.next_jpeg() {
                pictures.push(picture);
            }
        }
        assert_eq!(pictures, [good]);
        assert_eq!(splitter.corrupt, 1);
        assert!(peak <= MAX_JPEG_BYTES + (64 << 10), "{peak} bytes held");
        // Each byte is scanned a bounded number of times (the quadratic
        // rescan took minutes on this much input).
        assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
        // The same stream through the source: one frame, one corrupt.
        let mut source = MjpegSource::new(&stream[..], "test");
        let mut frames = 0;
        while source.next_frame().unwrap().is_some() {
            frames += 1;
        }
        assert_eq!((frames, source.stats().corrupt), (1, 1));
    }

    #[test]
    fn mjpeg_stream_skips_corrupt_pictures() {
        let mut stream = Vec::new();
        for seed in 0..3 {
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
                .encode_image(&scene(80, 60, seed))
                .unwrap();
            if seed == 1 {
                // Keep the markers, destroy the header: the decoder must reject it.
                for b in &mut jpeg[2..40] {
                    *b = 0x11;
                }
            }
            stream.extend_from_slice(&jpeg);
        }
        stream.extend_from_slice(&jpeg(7)[..100]); // a truncated last picture
        let mut source = MjpegSource::new(&stream[..], "test");
        let mut sizes = Vec::new();
        while let Some(f) = source.next_frame().unwrap() {
            sizes.push(f.size);
            // JPEG is lossy, but the picture is the scene.
            let original = scene(80, 60, if sizes.len() == 1 { 0 } else { 2 });
            let diff: u64 = f
                .data
                .iter()
                .zip(original.as_raw())
                .map(|(a, b)| (*a as i64 - *b as i64).unsigned_abs())
                .sum();
            assert!(
                diff / (f.data.len() as u64) < 12,
                "mean error {}",
                diff / f.data.len() as u64
            );
        }
        assert_eq!(sizes, [Size::new(80, 60); 2]);
        let stats = source.stats();
        assert_eq!(
            (stats.frames, stats.corrupt, stats.truncated_bytes),
            (2, 1, 100)
        );
    }

    #[test]
    fn folders_are_read_in_name_order_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        scene(40, 30, 1).save(dir.path().join("b.png")).unwrap();
        scene(20, 10, 2).save(dir.path().join("a.png")).unwrap();
        std::fs::write(dir.path().join("c.jpg"), b"not a jpeg").unwrap();
        let mut source = DirSource::new(dir.path()).unwrap();
        assert_eq!(
            source.next_frame().unwrap().unwrap().size,
            Size::new(20, 10)
        );
        assert_eq!(
            source.next_frame().unwrap().unwrap().size,
            Size::new(40, 30)
        );
        let err = source.next_frame().unwrap_err().to_string();
        assert!(err.contains("c.jpg"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert!(DirSource::new(empty.path()).is_err());
    }

    #[test]
    fn specs_parse_or_say_what_is_wrong() {
        assert!(open("synthetic:64x48", 0).is_ok());
        assert!(open("stdin:yuv420:640x480", 0).is_ok());
        let err = open("stdin:rgba:64x48", 0).err().unwrap().to_string();
        assert!(err.contains("formats"), "{err}");
        let err = open("camera", 0).err().unwrap().to_string();
        assert!(err.contains("expected"), "{err}");
        let err = open("synthetic:64", 0).err().unwrap().to_string();
        assert!(err.contains("size"), "{err}");
    }
}
