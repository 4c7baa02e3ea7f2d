//! `v4l2:/dev/videoN[:WxH]`: a USB camera (or the Pi camera under
//! `libcamerify`) through Video4Linux2, with memory-mapped buffers.

use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::{FrameSource, OwnedFrame, SourceError, SourceStats};
use crate::Size;
use crate::frame::PixelFormat;

/// How the camera's buffers are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Raw(PixelFormat),
    Jpeg,
}

/// The formats read, in order of preference, with their fourcc codes.
const FORMATS: [(&[u8; 4], Layout); 5] = [
    (b"YUYV", Layout::Raw(PixelFormat::Yuyv)),
    (b"NV12", Layout::Raw(PixelFormat::Nv12)),
    (b"YU12", Layout::Raw(PixelFormat::I420)),
    (b"RGB3", Layout::Raw(PixelFormat::Rgb8)),
    (b"MJPG", Layout::Jpeg),
];

/// Frames from a V4L2 capture device.
pub struct V4l2Source {
    stream: Stream<'static>,
    // Keeps the device open for as long as the stream runs.
    _device: Device,
    layout: Layout,
    frame: OwnedFrame,
    stats: SourceStats,
    what: String,
}

impl std::fmt::Debug for V4l2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Source")
            .field("device", &self.what)
            .field("layout", &self.layout)
            .field("size", &self.frame.size)
            .finish_non_exhaustive()
    }
}

impl V4l2Source {
    /// Opens `path`, asks for `size` in the first format of YUYV, NV12, YU12,
    /// RGB3 or MJPG the device offers (the driver may pick a nearby size),
    /// and starts streaming.
    pub fn open(path: &str, size: Size) -> Result<V4l2Source, SourceError> {
        let io = |e: std::io::Error| SourceError::Io {
            what: path.into(),
            source: e,
        };
        let device = Device::with_path(path).map_err(io)?;
        let offered: Vec<FourCC> = device
            .enum_formats()
            .map_err(io)?
            .into_iter()
            .map(|d| d.fourcc)
            .collect();
        let Some(&(code, layout)) = FORMATS
            .iter()
            .find(|(code, _)| offered.contains(&FourCC::new(code)))
        else {
            let names: Vec<String> = offered.iter().map(|f| f.to_string()).collect();
            return Err(SourceError::Spec {
                spec: path.into(),
                what: format!(
                    "the camera offers {}; edgeseg-run reads YUYV, NV12, YU12, RGB3 or MJPG",
                    names.join(", ")
                ),
            });
        };
        let mut format = device.format().map_err(io)?;
        format.width = size.width;
        format.height = size.height;
        format.fourcc = FourCC::new(code);
        let format = device.set_format(&format).map_err(io)?;
        let stream = Stream::with_buffers(&device, Type::VideoCapture, 4).map_err(io)?;
        let format_of = |layout| match layout {
            Layout::Raw(f) => f,
            Layout::Jpeg => PixelFormat::Rgb8,
        };
        Ok(V4l2Source {
            stream,
            _device: device,
            layout,
            frame: OwnedFrame {
                format: format_of(layout),
                size: Size::new(format.width, format.height),
                stride: format.stride as usize,
                data: Vec::new(),
            },
            stats: SourceStats::default(),
            what: path.into(),
        })
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Option<&OwnedFrame>, SourceError> {
        loop {
            let (buffer, meta) = self.stream.next().map_err(|source| SourceError::Io {
                what: self.what.clone(),
                source,
            })?;
            let bytes = &buffer[..(meta.bytesused as usize).min(buffer.len())];
            match self.layout {
                Layout::Raw(format) => {
                    let frame = &mut self.frame;
                    let need = format.frame_len(frame.size.height, frame.stride);
                    if bytes.len() < need {
                        // A short buffer (the device hiccupped): skip it.
                        self.stats.corrupt += 1;
                        continue;
                    }
                    frame.data.clear();
                    frame.data.extend_from_slice(&bytes[..need]);
                }
                Layout::Jpeg => {
                    match image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg) {
                        Ok(picture) => {
                            let rgb = picture.into_rgb8();
                            self.frame = OwnedFrame::from_rgb(rgb);
                        }
                        Err(_) => {
                            self.stats.corrupt += 1;
                            continue;
                        }
                    }
                }
            }
            self.stats.frames += 1;
            return Ok(Some(&self.frame));
        }
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }

    fn is_live(&self) -> bool {
        true
    }
}
