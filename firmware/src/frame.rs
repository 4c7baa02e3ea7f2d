//! Camera frames as they arrive (packed RGB/BGR/RGBA/grey, planar and
//! semi-planar YUV 4:2:0, packed YUYV 4:2:2, each with an explicit row stride)
//! and their conversion to the model's input: resize (bilinear, or area
//! averaging for large downscales) and per-channel normalisation, written into
//! a caller-provided buffer without allocating.
//!
//! YUV is converted with the BT.601 limited-range matrix, the default of the
//! Raspberry Pi camera stack for SD video and of most USB cameras.

use crate::Error;
use crate::size::Size;

/// How the pixels of a frame are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PixelFormat {
    /// Packed R, G, B bytes.
    Rgb8,
    /// Packed B, G, R bytes (OpenCV's order).
    Bgr8,
    /// Packed R, G, B, A bytes.
    Rgba8,
    /// One luma byte per pixel.
    Gray8,
    /// Planar Y, then U and V at half resolution (`yuv420` of `rpicam-vid`).
    I420,
    /// Planar Y, then interleaved U, V at half resolution.
    Nv12,
    /// Packed Y0 U Y1 V for each pair of pixels (most USB cameras).
    Yuyv,
}

impl PixelFormat {
    /// The format of a source description's name (`rgb`, `bgr`, `yuv420` or
    /// `i420`, `nv12`, `yuyv`, `gray`).
    pub fn from_name(name: &str) -> Option<PixelFormat> {
        Some(match name {
            "rgb" => PixelFormat::Rgb8,
            "bgr" => PixelFormat::Bgr8,
            "yuv420" | "i420" => PixelFormat::I420,
            "nv12" => PixelFormat::Nv12,
            "yuyv" => PixelFormat::Yuyv,
            "gray" => PixelFormat::Gray8,
            _ => return None,
        })
    }

    /// Bytes per pixel of the first plane's rows (YUV: of the luma plane; YUYV: 2).
    pub const fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 => 4,
            PixelFormat::Gray8 | PixelFormat::I420 | PixelFormat::Nv12 => 1,
            PixelFormat::Yuyv => 2,
        }
    }

    /// The shortest row stride of the first plane a frame `width` pixels wide
    /// can have: YUYV rows hold whole pixel pairs (4 bytes each), and the 4:2:0
    /// formats' chroma rows a sample pair for every two pixels, rounded up.
    pub const fn min_stride(self, width: u32) -> usize {
        let w = width as usize;
        match self {
            PixelFormat::Yuyv => 4 * w.div_ceil(2),
            PixelFormat::I420 | PixelFormat::Nv12 => 2 * w.div_ceil(2),
            _ => w * self.bytes_per_pixel(),
        }
    }

    /// The row stride of the first plane `rpicam-vid` and libcamera use for a
    /// frame `width` pixels wide: rows padded to a multiple of 64 bytes for
    /// YUV 4:2:0 (so that the chroma rows stay 32-byte aligned), none otherwise.
    pub const fn camera_stride(self, width: u32) -> usize {
        let tight = self.min_stride(width);
        match self {
            PixelFormat::I420 | PixelFormat::Nv12 => tight.next_multiple_of(64),
            _ => tight,
        }
    }

    /// Bytes a frame `height` rows high with first-plane row `stride` occupies.
    pub const fn frame_len(self, height: u32, stride: usize) -> usize {
        let h = height as usize;
        match self {
            // Y plane, then two chroma planes of half the stride and half the rows.
            PixelFormat::I420 => stride * h + 2 * (stride / 2) * h.div_ceil(2),
            // Y plane, then one interleaved chroma plane of full stride and half the rows.
            PixelFormat::Nv12 => stride * h + stride * h.div_ceil(2),
            _ => stride * h,
        }
    }
}

/// A borrowed frame.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    format: PixelFormat,
    size: Size,
    stride: usize,
    data: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A frame of `size` whose first-plane rows are `stride` bytes apart; `data`
    /// must hold at least [`PixelFormat::frame_len`] bytes.
    pub fn new(
        format: PixelFormat,
        size: Size,
        stride: usize,
        data: &'a [u8],
    ) -> Result<Frame<'a>, Error> {
        if size.width == 0 || size.height == 0 {
            return Err(Error::ZeroSize);
        }
        let min_stride = format.min_stride(size.width);
        let odd_chroma = matches!(format, PixelFormat::I420) && !stride.is_multiple_of(2);
        if stride < min_stride || odd_chroma {
            return Err(Error::BufferSize {
                expected: min_stride,
                actual: stride,
            });
        }
        let expected = format.frame_len(size.height, stride);
        if data.len() < expected {
            return Err(Error::BufferSize {
                expected,
                actual: data.len(),
            });
        }
        Ok(Frame {
            format,
            size,
            stride,
            data,
        })
    }

    /// A frame with the stride cameras use ([`PixelFormat::camera_stride`]).
    pub fn camera(format: PixelFormat, size: Size, data: &'a [u8]) -> Result<Frame<'a>, Error> {
        Frame::new(format, size, format.camera_stride(size.width), data)
    }

    /// Layout.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// Width and height.
    pub fn size(&self) -> Size {
        self.size
    }

    /// Bytes between the starts of two rows of the first plane.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The RGB value of pixel `(x, y)`; `x` and `y` must be inside the frame.
    #[inline]
    pub fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let s = self.stride;
        let d = self.data;
        match self.format {
            PixelFormat::Rgb8 => {
                let i = y * s + 3 * x;
                [d[i], d[i + 1], d[i + 2]]
            }
            PixelFormat::Bgr8 => {
                let i = y * s + 3 * x;
                [d[i + 2], d[i + 1], d[i]]
            }
            PixelFormat::Rgba8 => {
                let i = y * s + 4 * x;
                [d[i], d[i + 1], d[i + 2]]
            }
            PixelFormat::Gray8 => {
                let v = d[y * s + x];
                [v, v, v]
            }
            PixelFormat::I420 => {
                let h = self.size.height as usize;
                let (cs, ch) = (s / 2, h.div_ceil(2));
                let u = d[s * h + (y / 2) * cs + x / 2];
                let v = d[s * h + cs * ch + (y / 2) * cs + x / 2];
                yuv_to_rgb(d[y * s + x], u, v)
            }
            PixelFormat::Nv12 => {
                let h = self.size.height as usize;
                let i = s * h + (y / 2) * s + (x / 2) * 2;
                yuv_to_rgb(d[y * s + x], d[i], d[i + 1])
            }
            PixelFormat::Yuyv => {
                let pair = y * s + (x / 2) * 4;
                yuv_to_rgb(d[pair + 2 * (x % 2)], d[pair + 1], d[pair + 3])
            }
        }
    }
}

/// BT.601 limited-range YUV to RGB in 16.16 fixed point.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as i32 - 16) * 76_309; // 1.164 * 65536
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clamp = |x: i32| ((x + 32_768) >> 16).clamp(0, 255) as u8;
    [
        clamp(c + 104_597 * e),             // 1.596
        clamp(c - 25_675 * d - 53_279 * e), // 0.392, 0.813
        clamp(c + 132_201 * d),             // 2.017
    ]
}

/// Per-channel normalisation: `(value / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Channel means in 0..1 units.
    pub mean: [f32; 3],
    /// Channel standard deviations in 0..1 units.
    pub std: [f32; 3],
}

impl Normalization {
    /// `(scale, offset)` per channel so that `normalised = value * scale + offset`
    /// for a value in 0..255.
    fn affine(&self) -> [(f32, f32); 3] {
        core::array::from_fn(|c| (1.0 / (255.0 * self.std[c]), -self.mean[c] / self.std[c]))
    }
}

/// Resizes `frame` to `out_size` and writes normalised planar RGB
/// (`3 * width * height` floats, channels first) into `out`.
///
/// Each output pixel samples the frame at its centre (half-pixel alignment, as
/// PyTorch's `align_corners=False` and the `image` crate do). Where the frame
/// is more than twice as large as the output along both axes, each output pixel
/// is the average of the source pixels it covers (area resampling, which avoids
/// aliasing); otherwise it is bilinear.
pub fn preprocess(
    frame: &Frame<'_>,
    out_size: Size,
    norm: &Normalization,
    out: &mut [f32],
) -> Result<(), Error> {
    let (ow, oh) = (out_size.width as usize, out_size.height as usize);
    if ow == 0 || oh == 0 {
        return Err(Error::ZeroSize);
    }
    if out.len() != 3 * ow * oh {
        return Err(Error::BufferSize {
            expected: 3 * ow * oh,
            actual: out.len(),
        });
    }
    let (fw, fh) = (frame.size.width as usize, frame.size.height as usize);
    let (sx, sy) = (fw as f32 / ow as f32, fh as f32 / oh as f32);
    let affine = norm.affine();
    let plane = ow * oh;
    let area = sx > 2.0 && sy > 2.0;
    for oy in 0..oh {
        for ox in 0..ow {
            let rgb = if area {
                area_sample(frame, ox, oy, sx, sy)
            } else {
                bilinear_sample(frame, ox, oy, sx, sy)
            };
            let i = oy * ow + ox;
            for c in 0..3 {
                out[c * plane + i] = rgb[c] * affine[c].0 + affine[c].1;
            }
        }
    }
    Ok(())
}

/// Bilinear sample at the centre of output pixel `(ox, oy)`, as floats in 0..255.
#[inline]
fn bilinear_sample(frame: &Frame<'_>, ox: usize, oy: usize, sx: f32, sy: f32) -> [f32; 3] {
    let (fw, fh) = (frame.size.width as usize, frame.size.height as usize);
    let x = ((ox as f32 + 0.5) * sx - 0.5).max(0.0);
    let y = ((oy as f32 + 0.5) * sy - 0.5).max(0.0);
    let (x0, y0) = ((x as usize).min(fw - 1), (y as usize).min(fh - 1));
    let (x1, y1) = ((x0 + 1).min(fw - 1), (y0 + 1).min(fh - 1));
    let (ax, ay) = (x - x0 as f32, y - y0 as f32);
    let (p00, p10, p01, p11) = (
        frame.rgb(x0, y0),
        frame.rgb(x1, y0),
        frame.rgb(x0, y1),
        frame.rgb(x1, y1),
    );
    core::array::from_fn(|c| {
        let top = p00[c] as f32 + (p10[c] as f32 - p00[c] as f32) * ax;
        let bottom = p01[c] as f32 + (p11[c] as f32 - p01[c] as f32) * ax;
        top + (bottom - top) * ay
    })
}

/// Mean of the source pixels whose centres fall in output pixel `(ox, oy)`.
#[inline]
fn area_sample(frame: &Frame<'_>, ox: usize, oy: usize, sx: f32, sy: f32) -> [f32; 3] {
    let (fw, fh) = (frame.size.width as usize, frame.size.height as usize);
    let (x0, x1) = area_span(ox, sx, fw);
    let (y0, y1) = area_span(oy, sy, fh);
    let mut sum = [0u32; 3];
    for y in y0..y1 {
        for x in x0..x1 {
            let p = frame.rgb(x, y);
            for c in 0..3 {
                sum[c] += p[c] as u32;
            }
        }
    }
    let n = ((x1 - x0) * (y1 - y0)) as f32;
    sum.map(|s| s as f32 / n)
}

/// The pixels of row `y` of `frame` as packed RGB into `out` (`3 * width`
/// bytes), with the format decided once per row rather than per pixel.
pub fn row_rgb(frame: &Frame<'_>, y: usize, out: &mut [u8]) {
    let w = frame.size.width as usize;
    let (s, d) = (frame.stride, frame.data);
    let out = &mut out[..3 * w];
    match frame.format {
        PixelFormat::Rgb8 => out.copy_from_slice(&d[y * s..][..3 * w]),
        PixelFormat::Bgr8 => {
            for (o, p) in out
                .chunks_exact_mut(3)
                .zip(d[y * s..][..3 * w].chunks_exact(3))
            {
                o.copy_from_slice(&[p[2], p[1], p[0]]);
            }
        }
        PixelFormat::Rgba8 => {
            for (o, p) in out
                .chunks_exact_mut(3)
                .zip(d[y * s..][..4 * w].chunks_exact(4))
            {
                o.copy_from_slice(&p[..3]);
            }
        }
        PixelFormat::Gray8 => {
            for (o, &v) in out.chunks_exact_mut(3).zip(&d[y * s..][..w]) {
                o.copy_from_slice(&[v, v, v]);
            }
        }
        PixelFormat::I420 => {
            let h = frame.size.height as usize;
            let (cs, ch) = (s / 2, h.div_ceil(2));
            let luma = &d[y * s..][..w];
            let u = &d[s * h + (y / 2) * cs..][..w.div_ceil(2)];
            let v = &d[s * h + cs * ch + (y / 2) * cs..][..w.div_ceil(2)];
            for (x, (o, &l)) in out.chunks_exact_mut(3).zip(luma).enumerate() {
                o.copy_from_slice(&yuv_to_rgb(l, u[x / 2], v[x / 2]));
            }
        }
        PixelFormat::Nv12 => {
            let h = frame.size.height as usize;
            let luma = &d[y * s..][..w];
            let uv = &d[s * h + (y / 2) * s..][..2 * w.div_ceil(2)];
            for (x, (o, &l)) in out.chunks_exact_mut(3).zip(luma).enumerate() {
                o.copy_from_slice(&yuv_to_rgb(l, uv[x / 2 * 2], uv[x / 2 * 2 + 1]));
            }
        }
        PixelFormat::Yuyv => {
            let row = &d[y * s..][..4 * w.div_ceil(2)];
            for (x, o) in out.chunks_exact_mut(3).enumerate() {
                let pair = (x / 2) * 4;
                o.copy_from_slice(&yuv_to_rgb(
                    row[pair + 2 * (x % 2)],
                    row[pair + 1],
                    row[pair + 3],
                ));
            }
        }
    }
}

/// [`preprocess`] with tables and row buffers kept between frames: each source
/// row is converted to RGB once (not once per sample), and the per-column
/// positions and weights are computed once per frame size. Same results as
/// [`preprocess`], bit for bit; no allocation once the frame size is known.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default)]
pub struct Preprocessor {
    key: Option<(Size, Size)>,
    /// Bilinear: left column and weight of the right one; area: column span.
    columns: alloc::vec::Vec<(u32, u32, f32)>,
    /// Two converted source rows.
    rows: alloc::vec::Vec<u8>,
    held: [usize; 2],
    /// Area: per-column channel sums.
    sums: alloc::vec::Vec<u32>,
}

#[cfg(feature = "alloc")]
impl Preprocessor {
    /// An empty preprocessor; its buffers grow on the first frame.
    pub fn new() -> Preprocessor {
        Preprocessor::default()
    }

    fn prepare(&mut self, frame: Size, out: Size) {
        self.held = [usize::MAX; 2];
        if self.key == Some((frame, out)) {
            return;
        }
        let (fw, ow) = (frame.width as usize, out.width as usize);
        let sx = fw as f32 / ow as f32;
        let sy = frame.height as f32 / out.height as f32;
        self.columns.clear();
        if sx > 2.0 && sy > 2.0 {
            self.columns.extend((0..ow).map(|ox| {
                let (lo, hi) = area_span(ox, sx, fw);
                (lo as u32, hi as u32, 0.0)
            }));
        } else {
            self.columns.extend((0..ow).map(|ox| {
                let x = ((ox as f32 + 0.5) * sx - 0.5).max(0.0);
                let x0 = (x as usize).min(fw - 1);
                (x0 as u32, (x0 + 1).min(fw - 1) as u32, x - x0 as f32)
            }));
        }
        self.rows.resize(2 * 3 * fw, 0);
        self.sums.resize(3 * ow, 0);
        self.key = Some((frame, out));
    }

    /// The slot holding source row `y`, converting it into a slot other than
    /// `keep` if it is not held yet.
    fn row(&mut self, frame: &Frame<'_>, y: usize, keep: usize) -> usize {
        if let Some(slot) = self.held.iter().position(|&h| h == y) {
            return slot;
        }
        let slot = if self.held[0] == keep { 1 } else { 0 };
        let n = 3 * frame.size.width as usize;
        row_rgb(frame, y, &mut self.rows[slot * n..][..n]);
        self.held[slot] = y;
        slot
    }

    /// Like [`preprocess`]: resizes `frame` to `out_size` and writes normalised
    /// planar RGB into `out`.
    pub fn run(
        &mut self,
        frame: &Frame<'_>,
        out_size: Size,
        norm: &Normalization,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let (ow, oh) = (out_size.width as usize, out_size.height as usize);
        if ow == 0 || oh == 0 {
            return Err(Error::ZeroSize);
        }
        if out.len() != 3 * ow * oh {
            return Err(Error::BufferSize {
                expected: 3 * ow * oh,
                actual: out.len(),
            });
        }
        self.prepare(frame.size, out_size);
        let (fw, fh) = (frame.size.width as usize, frame.size.height as usize);
        let (sx, sy) = (fw as f32 / ow as f32, fh as f32 / oh as f32);
        let affine = norm.affine();
        let plane = ow * oh;
        let n = 3 * fw;
        if sx > 2.0 && sy > 2.0 {
            for oy in 0..oh {
                let (y0, y1) = area_span(oy, sy, fh);
                self.sums.fill(0);
                for y in y0..y1 {
                    row_rgb(frame, y, &mut self.rows[..n]);
                    let row = &self.rows[..n];
                    for (&(lo, hi, _), sum) in
                        self.columns.iter().zip(self.sums.chunks_exact_mut(3))
                    {
                        for p in row[3 * lo as usize..3 * hi as usize].chunks_exact(3) {
                            for c in 0..3 {
                                sum[c] += p[c] as u32;
                            }
                        }
                    }
                }
                for (ox, (&(lo, hi, _), sum)) in self
                    .columns
                    .iter()
                    .zip(self.sums.chunks_exact(3))
                    .enumerate()
                {
                    let count = ((hi - lo) as usize * (y1 - y0)) as f32;
                    for c in 0..3 {
                        out[c * plane + oy * ow + ox] =
                            sum[c] as f32 / count * affine[c].0 + affine[c].1;
                    }
                }
            }
            return Ok(());
        }
        for oy in 0..oh {
            let y = ((oy as f32 + 0.5) * sy - 0.5).max(0.0);
            let y0 = (y as usize).min(fh - 1);
            let y1 = (y0 + 1).min(fh - 1);
            let ay = y - y0 as f32;
            let top = self.row(frame, y0, usize::MAX);
            let bottom = self.row(frame, y1, y0);
            let (r0, r1) = (&self.rows[top * n..][..n], &self.rows[bottom * n..][..n]);
            for (ox, &(x0, x1, ax)) in self.columns.iter().enumerate() {
                let (x0, x1) = (3 * x0 as usize, 3 * x1 as usize);
                let i = oy * ow + ox;
                for c in 0..3 {
                    let (p00, p10) = (r0[x0 + c] as f32, r0[x1 + c] as f32);
                    let (p01, p11) = (r1[x0 + c] as f32, r1[x1 + c] as f32);
                    let t = p00 + (p10 - p00) * ax;
                    let b = p01 + (p11 - p01) * ax;
                    out[c * plane + i] = (t + (b - t) * ay) * affine[c].0 + affine[c].1;
                }
            }
        }
        Ok(())
    }
}

/// The source pixels `[lo, hi)` whose centres fall in output pixel `o` when
/// downscaling by `s` along an axis of `n` pixels.
#[inline]
fn area_span(o: usize, s: f32, n: usize) -> (usize, usize) {
    let lo = (libm::roundf(o as f32 * s) as usize).min(n - 1);
    let hi = (libm::roundf((o + 1) as f32 * s) as usize).clamp(lo + 1, n);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    extern crate std;
    use std::vec;
    use std::vec::Vec;

    /// Encodes RGB pixels into `format` with `stride`, the naive way, using the
    /// BT.601 limited-range forward matrix; chroma is taken from the top-left
    /// pixel of each 2x2 (or 2x1) block.
    fn encode(rgb: &[[u8; 3]], w: usize, h: usize, format: PixelFormat, stride: usize) -> Vec<u8> {
        let mut out = vec![0u8; format.frame_len(h as u32, stride)];
        let yuv = |p: [u8; 3]| {
            let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
            let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
            let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
            let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
            [y, u, v].map(|x| x.round().clamp(0.0, 255.0) as u8)
        };
        for y in 0..h {
            for x in 0..w {
                let p = rgb[y * w + x];
                let [yy, u, v] = yuv(p);
                let chroma = yuv(rgb[(y / 2 * 2) * w + x / 2 * 2]);
                match format {
                    PixelFormat::Rgb8 => out[y * stride + 3 * x..][..3].copy_from_slice(&p),
                    PixelFormat::Bgr8 => {
                        out[y * stride + 3 * x..][..3].copy_from_slice(&[p[2], p[1], p[0]])
                    }
                    PixelFormat::Rgba8 => {
                        out[y * stride + 4 * x..][..4].copy_from_slice(&[p[0], p[1], p[2], 255])
                    }
                    PixelFormat::Gray8 => out[y * stride + x] = p[0],
                    PixelFormat::I420 => {
                        out[y * stride + x] = yy;
                        let cs = stride / 2;
                        let base = stride * h;
                        out[base + (y / 2) * cs + x / 2] = chroma[1];
                        out[base + cs * h.div_ceil(2) + (y / 2) * cs + x / 2] = chroma[2];
                    }
                    PixelFormat::Nv12 => {
                        out[y * stride + x] = yy;
                        let i = stride * h + (y / 2) * stride + (x / 2) * 2;
                        out[i] = chroma[1];
                        out[i + 1] = chroma[2];
                    }
                    PixelFormat::Yuyv => {
                        let pair = y * stride + (x / 2) * 4;
                        out[pair + 2 * (x % 2)] = yy;
                        let c = yuv(rgb[y * w + x / 2 * 2]);
                        out[pair + 1] = c[1];
                        out[pair + 3] = c[2];
                    }
                }
                let _ = (u, v);
            }
        }
        out
    }

    fn image(w: usize, h: usize, seed: u64) -> Vec<[u8; 3]> {
        let mut rng = crate::rng::Rng::new(seed);
        // Saturated colours with smooth per-channel gradients: chroma matters,
        // and subsampling it loses little.
        let base: [f32; 3] = core::array::from_fn(|_| rng.range(0.0, 255.0));
        let gx: [f32; 3] = core::array::from_fn(|_| rng.range(-2.0, 2.0));
        let gy: [f32; 3] = core::array::from_fn(|_| rng.range(-2.0, 2.0));
        (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32, (i / w) as f32);
                core::array::from_fn(|c| (base[c] + gx[c] * x + gy[c] * y).clamp(0.0, 255.0) as u8)
            })
            .collect()
    }

    const ALL: [PixelFormat; 7] = [
        PixelFormat::Rgb8,
        PixelFormat::Bgr8,
        PixelFormat::Rgba8,
        PixelFormat::Gray8,
        PixelFormat::I420,
        PixelFormat::Nv12,
        PixelFormat::Yuyv,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every format decodes back to the picture it encodes: exactly for RGB
        /// layouts, within the rounding of limited-range YUV otherwise.
        #[test]
        fn formats_decode_what_was_encoded(w in 1usize..40, h in 1usize..30, pad in 0usize..70, seed: u64, fi in 0usize..7) {
            let format = ALL[fi];
            let w = if format == PixelFormat::Yuyv { w.next_multiple_of(2) } else { w };
            let rgb = image(w, h, seed);
            let stride = (w * format.bytes_per_pixel() + pad).next_multiple_of(2);
            let bytes = encode(&rgb, w, h, format, stride);
            let frame = Frame::new(format, Size::new(w as u32, h as u32), stride, &bytes).unwrap();
            for y in 0..h {
                for x in 0..w {
                    let got = frame.rgb(x, y);
                    let want = rgb[y * w + x];
                    let tolerance = match format {
                        PixelFormat::Gray8 => {
                            prop_assert_eq!(got, [want[0]; 3]);
                            continue;
                        }
                        PixelFormat::Rgb8 | PixelFormat::Bgr8 | PixelFormat::Rgba8 => 0,
                        // Luma rounding plus chroma shared with neighbours (<= 3.5 levels apart).
                        _ => 12,
                    };
                    for c in 0..3 {
                        let d = (got[c] as i32 - want[c] as i32).abs();
                        prop_assert!(d <= tolerance, "{format:?} ({x},{y}) c{c}: {got:?} vs {want:?}");
                    }
                }
            }
        }

        /// The row-caching preprocessor gives exactly what `preprocess` gives, for
        /// every format, padded strides, upscales, bilinear and area downscales,
        /// one instance reused across frame sizes.
        #[cfg(feature = "alloc")]
        #[test]
        fn preprocessor_equals_preprocess(w in 1usize..120, h in 1usize..90, ow in 1usize..40, oh in 1usize..30, pad in 0usize..9, seed: u64) {
            let norm = Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
            let out_size = Size::new(ow as u32, oh as u32);
            let mut pre = Preprocessor::new();
            for format in ALL {
                let w = if format == PixelFormat::Yuyv { w.next_multiple_of(2) } else { w };
                let rgb = image(w, h, seed);
                let stride = (w * format.bytes_per_pixel() + pad).next_multiple_of(2);
                let bytes = encode(&rgb, w, h, format, stride);
                let frame = Frame::new(format, Size::new(w as u32, h as u32), stride, &bytes).unwrap();
                let mut want = vec![0.0; 3 * ow * oh];
                preprocess(&frame, out_size, &norm, &mut want).unwrap();
                for _ in 0..2 {
                    let mut got = vec![1.0; 3 * ow * oh];
                    pre.run(&frame, out_size, &norm, &mut got).unwrap();
                    prop_assert_eq!(&got, &want, "{:?}", format);
                }
            }
        }

        /// Resizing and normalising matches a naive floating-point reference.
        #[test]
        fn preprocess_matches_reference(w in 1usize..90, h in 1usize..70, ow in 1usize..40, oh in 1usize..30, seed: u64) {
            let rgb = image(w, h, seed);
            let bytes: Vec<u8> = rgb.iter().flatten().copied().collect();
            let frame = Frame::new(PixelFormat::Rgb8, Size::new(w as u32, h as u32), 3 * w, &bytes).unwrap();
            let norm = Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
            let mut out = vec![0.0; 3 * ow * oh];
            preprocess(&frame, Size::new(ow as u32, oh as u32), &norm, &mut out).unwrap();
            // Scales and area spans in f32 as the implementation computes them, so
            // that both round the same .5 ties.
            let (sx32, sy32) = (w as f32 / ow as f32, h as f32 / oh as f32);
            let (sx, sy) = (sx32 as f64, sy32 as f64);
            let span = |o: usize, s: f32, n: usize| {
                let lo = ((o as f32 * s).round() as usize).min(n - 1);
                (lo, (((o + 1) as f32 * s).round() as usize).clamp(lo + 1, n))
            };
            let px = |x: usize, y: usize, c: usize| rgb[y * w + x][c] as f64;
            for oy in 0..oh {
                for ox in 0..ow {
                    for c in 0..3 {
                        let v = if sx32 > 2.0 && sy32 > 2.0 {
                            // Area: the mean over the covered source pixels.
                            let (x0, x1) = span(ox, sx32, w);
                            let (y0, y1) = span(oy, sy32, h);
                            let mut s = 0.0;
                            for y in y0..y1 { for x in x0..x1 { s += px(x, y, c); } }
                            s / ((x1 - x0) * (y1 - y0)) as f64
                        } else {
                            let x = ((ox as f64 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f64);
                            let y = ((oy as f64 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f64);
                            let (x0, y0) = (x.floor() as usize, y.floor() as usize);
                            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                            let (ax, ay) = (x - x0 as f64, y - y0 as f64);
                            (px(x0, y0, c) * (1.0 - ax) + px(x1, y0, c) * ax) * (1.0 - ay)
                                + (px(x0, y1, c) * (1.0 - ax) + px(x1, y1, c) * ax) * ay
                        };
                        let want = (v / 255.0 - norm.mean[c] as f64) / norm.std[c] as f64;
                        let got = out[c * ow * oh + oy * ow + ox] as f64;
                        prop_assert!((got - want).abs() < 1e-3, "({ox},{oy}) c{c}: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_short_buffers_and_bad_strides() {
        let data = vec![0u8; 100];
        let size = Size::new(8, 8);
        assert!(matches!(
            Frame::new(PixelFormat::Rgb8, size, 24, &data),
            Err(Error::BufferSize {
                expected: 192,
                actual: 100
            })
        ));
        assert!(matches!(
            Frame::new(PixelFormat::Rgb8, size, 20, &data),
            Err(Error::BufferSize { .. })
        ));
        assert_eq!(
            Frame::new(PixelFormat::Gray8, Size::new(0, 4), 8, &data).unwrap_err(),
            Error::ZeroSize
        );
        let mut out = vec![0.0; 10];
        let frame = Frame::new(PixelFormat::Gray8, size, 8, &data).unwrap();
        let norm = Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        assert!(preprocess(&frame, Size::new(4, 4), &norm, &mut out).is_err());
    }

    #[test]
    fn camera_strides_follow_rpicam() {
        // 640 is already a multiple of 64; 1296 pads to 1344; RGB is tight.
        assert_eq!(PixelFormat::I420.camera_stride(640), 640);
        assert_eq!(PixelFormat::I420.camera_stride(1296), 1344);
        assert_eq!(PixelFormat::Rgb8.camera_stride(1296), 3888);
        assert_eq!(PixelFormat::I420.frame_len(480, 640), 640 * 480 * 3 / 2);
    }

    /// Found by the `raw_frames` fuzz target: a YUYV frame of odd width at
    /// the stride its pixels alone need (2 bytes each) panicked reading its
    /// last row's half pair.
    #[test]
    fn odd_widths_read_inside_the_frame_at_the_shortest_stride() {
        for format in ALL {
            for (w, h) in [(1, 1), (7, 2), (5, 3), (3, 1)] {
                let size = Size::new(w, h);
                let stride = format.min_stride(w);
                let len = format.frame_len(h, stride);
                let data: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
                let frame = Frame::new(format, size, stride, &data).unwrap();
                let mut row = vec![0; 3 * w as usize];
                for y in 0..h as usize {
                    row_rgb(&frame, y, &mut row);
                    for x in 0..w as usize {
                        assert_eq!(frame.rgb(x, y), row[3 * x..3 * x + 3], "{format:?} {size}");
                    }
                }
                assert!(
                    Frame::camera(format, size, &data).is_ok() || format.camera_stride(w) > stride
                );
            }
        }
        // Odd YUYV rows need the half pair's padding.
        let data = [0u8; 14 * 2];
        assert!(Frame::new(PixelFormat::Yuyv, Size::new(7, 2), 14, &data).is_err());
    }

    #[test]
    fn yuv_extremes_are_black_and_white() {
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
    }
}
