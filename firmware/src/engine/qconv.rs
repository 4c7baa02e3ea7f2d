//! int8 convolutions computed directly with 8-bit dot products (AVX-512
//! VNNI's `vpdpbusd` on x86-64, `sdot` on aarch64), as a tract operator
//! substituted into the decluttered int8 graph at load (see [`substitute`]).
//!
//! tract runs a quantised convolution as a materialised im2col (nine copies
//! of the input for a 3x3), an i32 matrix product, then passes of its own to
//! compensate the zero points and requantise: on the demo model that is
//! about twice the float model's time. Here the input is packed once per
//! convolution with 4 channels side by side in each 32-bit word (offset to
//! unsigned bytes on x86, where `vpdpbusd` wants them) and padded with its
//! zero point (`QConv::pack`). Each block of [`PIXELS`] output pixels of a
//! row (two half rows on narrow planes) then keeps [`OUTS`] output channels
//! in i32 registers, a pixel in each lane: every kernel tap multiplies 4
//! channels of the block's pixels by an output channel's 4 weights in one
//! instruction, the weights broadcast from memory (x86) or taken from a lane
//! (aarch64). The zero points fold into one constant per output channel, and
//! the requantisation (scale, rounding to even, zero point, saturation) is
//! done on the way out, 16 output bytes at a time.
//!
//! The semantics are those of tract's quantised `Conv` (and of ONNX
//! `QLinearConv`): `y = sat(round((sum k (x - x0) + bias) * k_scale * x_scale
//! / y_scale) + y0)` with symmetric weights (`k0 = 0`). The scale is applied in f32,
//! where tract uses a fixed-point multiplier, so an output may differ from
//! tract's by one step where the product falls on a rounding tie.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::Downsample;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::blas::split_rows;
use super::graph::{ConvGeometry, constant, replace_from};

/// Output pixels per block: the i32 lanes of one AVX-512 register, of four
/// NEON registers.
pub const PIXELS: usize = 16;

/// Output channels per block: one AVX-512 register each; on aarch64 the 4
/// lanes of one NEON register of weights, for `sdot`'s indexed form.
#[cfg(target_arch = "x86_64")]
pub const OUTS: usize = 16;
/// Output channels per block: one AVX-512 register each; on aarch64 the 4
/// lanes of one NEON register of weights, for `sdot`'s indexed form.
#[cfg(not(target_arch = "x86_64"))]
pub const OUTS: usize = 4;

/// What packing adds to each input code: `vpdpbusd` multiplies unsigned
/// bytes by signed ones, so x86 packs `x + 128` (and takes `128 * sum(k)`
/// back out); `sdot` multiplies signed bytes by signed ones.
#[cfg(target_arch = "x86_64")]
const SHIFT: i32 = 128;
#[cfg(not(target_arch = "x86_64"))]
const SHIFT: i32 = 0;

/// The kernel's name in [`Engine::matmul_kernels`](super::Engine::matmul_kernels).
#[cfg(target_arch = "x86_64")]
pub const KERNEL: &str = "edgeseg_qconv_avx512vnni";
/// The kernel's name in [`Engine::matmul_kernels`](super::Engine::matmul_kernels).
#[cfg(not(target_arch = "x86_64"))]
pub const KERNEL: &str = "edgeseg_qconv_sdot";

/// Horizontal strides up to which convolutions run here.
pub const MAX_STRIDE: usize = 4;

/// A quantised convolution `[n, ins, h, w]` to `[n, outs, ho, wo]`, i8 to
/// i8, with any kernel, stride and padding.
#[derive(Debug, Clone, PartialEq)]
pub struct QConv {
    geometry: ConvGeometry,
    /// `[block][c4][ky][kx][OUTS]`: for each block of [`OUTS`] output
    /// channels, the 4 weights of 4 consecutive input channels at each tap,
    /// as one little-endian word per output channel (zero past `ins` and
    /// `outs`).
    weights: Arc<Vec<i32>>,
    /// Per output channel: the bias less the input zero point's share,
    /// `bias - (x0 + SHIFT) * sum(k)`, added to the sum of `k * (x + SHIFT)`.
    offset: Arc<Vec<i32>>,
    /// Per output channel: `k_scale * x_scale / y_scale`.
    scale: Arc<Vec<f32>>,
    /// The input's zero point, which pads it.
    x0: i8,
    /// The output's zero point.
    y0: i32,
    /// 4 for `NCHW` output, 3 for `CHW` (one image, as tract's
    /// decluttering leaves some convolutions).
    output_rank: usize,
}

impl Eq for QConv {}

/// The quantisation of one convolution, as ONNX `QLinearConv` has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantization {
    /// The input's zero point.
    pub x0: i8,
    /// The input's scale.
    pub x_scale: f32,
    /// The kernel's scale, one per output channel or one for all.
    pub k_scale: Vec<f32>,
    /// The output's zero point.
    pub y0: i8,
    /// The output's scale.
    pub y_scale: f32,
}

/// Whether this CPU runs [`QConv`]'s kernel: AVX-512 with VNNI on x86-64
/// (Ice Lake and later Xeons, Zen 4 and later), the dot-product extension
/// on aarch64 (Cortex-A76 of the Raspberry Pi 5, A78AE of the Jetson Orin;
/// not the Pi 4's A72).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl QConv {
    /// The convolution `geometry` with `OIHW` i8 `kernel` (`outs x ins x kh x
    /// kw`, zero point 0), i32 `bias` (in units of `x_scale * k_scale`) and
    /// quantisation `q`.
    pub fn new(kernel: &[i8], bias: &[i32], geometry: ConvGeometry, q: &Quantization) -> QConv {
        let g = geometry;
        let (outs, ins, [kh, kw]) = (g.outs, g.ins, g.kernel);
        assert_eq!(
            kernel.len(),
            outs * g.taps(),
            "kernel is outs x ins x kh x kw"
        );
        assert_eq!(bias.len(), outs, "one bias per output channel");
        assert!(
            q.k_scale.len() == 1 || q.k_scale.len() == outs,
            "one kernel scale, or one per output channel"
        );
        let c4 = ins.div_ceil(4);
        let blocks = outs.div_ceil(OUTS);
        let mut bytes = vec![0i8; blocks * c4 * kh * kw * OUTS * 4];
        let mut offset = vec![0i32; outs];
        let mut scale = vec![0.0f32; outs];
        for o in 0..outs {
            let (b, lane) = (o / OUTS, o % OUTS);
            let mut sum = 0i32;
            for c in 0..ins {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let k = kernel[((o * ins + c) * kh + ky) * kw + kx];
                        sum += k as i32;
                        let word = (((b * c4 + c / 4) * kh + ky) * kw + kx) * OUTS + lane;
                        bytes[word * 4 + c % 4] = k;
                    }
                }
            }
            offset[o] = bias[o] - (q.x0 as i32 + SHIFT) * sum;
            let k_scale = q.k_scale[if q.k_scale.len() == 1 { 0 } else { o }];
            scale[o] = k_scale * q.x_scale / q.y_scale;
        }
        let weights = bytes
            .chunks_exact(4)
            .map(|w| i32::from_le_bytes([w[0] as u8, w[1] as u8, w[2] as u8, w[3] as u8]))
            .collect();
        QConv {
            geometry,
            weights: Arc::new(weights),
            offset: Arc::new(offset),
            scale: Arc::new(scale),
            x0: q.x0,
            y0: q.y0 as i32,
            output_rank: 4,
        }
    }

    /// The same convolution writing `CHW` (`rank` 3, one image) or `NCHW`
    /// (`rank` 4) output, whatever the input's rank.
    pub fn with_output_rank(mut self, rank: usize) -> QConv {
        assert!(rank == 3 || rank == 4, "output rank 3 or 4");
        self.output_rank = rank;
        self
    }

    /// The output shape for `n` images.
    fn output_shape<D: DimLike>(&self, n: D) -> TVec<D> {
        let [ho, wo] = self.geometry.output;
        let chw = [self.geometry.outs.into(), ho.into(), wo.into()];
        let mut shape: TVec<D> = if self.output_rank == 4 {
            tvec![n]
        } else {
            tvec![]
        };
        shape.extend(chw);
        shape
    }

    /// Whether a block of [`PIXELS`] pixels holds two output rows of at
    /// most half as many pixels (the narrow planes of the last stages),
    /// rather than leaving half its lanes idle.
    fn paired(&self) -> bool {
        self.geometry.output[1] <= PIXELS / 2
    }

    /// The packed input's layout: padded rows, words per row phase (the
    /// columns `i * stride + phase` for `i` in `0..`), groups of 4 channels.
    fn packed_dims(&self) -> (usize, usize, usize) {
        let g = &self.geometry;
        let ([ho, wo], [kh, kw], [sy, sx]) = (g.output, g.kernel, g.stride);
        let rows = (ho - 1) * sy + kh;
        let words = wo.div_ceil(PIXELS) * PIXELS + (kw - 1) / sx;
        (rows, words, g.ins.div_ceil(4))
    }

    /// Packs one image `input` (`ins x h x w` i8) into `packed`: word
    /// `[c4][row][phase][i]` holds channels `4 c4 .. 4 c4 + 3` of padded
    /// column `i * sx + phase` of padded row `row`, each as `x + SHIFT`
    /// (an unsigned byte on x86), with the zero point wherever the window
    /// leaves the image.
    fn pack(&self, input: &[i8], packed: &mut [u32]) {
        let g = &self.geometry;
        let ([h, w], [pt, pl], sx) = (g.input, g.pad, g.stride[1]);
        let (rows, words, c4s) = self.packed_dims();
        let flip = SHIFT as u8;
        packed.fill(u32::from_le_bytes([(self.x0 as u8) ^ flip; 4]));
        for c4 in 0..c4s {
            for row in 0..rows {
                let Some(iy) = row.checked_sub(pt).filter(|&iy| iy < h) else {
                    continue;
                };
                // Channels past `ins` in the last group repeat its first:
                // their weights are zero.
                let channel = |j: usize| {
                    let c = if 4 * c4 + j < g.ins {
                        4 * c4 + j
                    } else {
                        4 * c4
                    };
                    &input[(c * h + iy) * w..][..w]
                };
                let [r0, r1, r2, r3] = [0, 1, 2, 3].map(channel);
                let base = (c4 * rows + row) * sx * words;
                for phase in 0..sx {
                    // Words i of this phase hold column ix = i * sx + phase - pl.
                    let lo = pl.saturating_sub(phase).div_ceil(sx);
                    let hi = (w + pl).saturating_sub(phase).div_ceil(sx).min(words);
                    if lo >= hi {
                        continue;
                    }
                    let dst = &mut packed[base + phase * words + lo..base + phase * words + hi];
                    let first = lo * sx + phase - pl;
                    let word = |a: i8, b: i8, c: i8, d: i8| {
                        u32::from_le_bytes([a as u8, b as u8, c as u8, d as u8].map(|v| v ^ flip))
                    };
                    if sx == 1 {
                        // Four contiguous rows interleaved: vectorised.
                        let n = dst.len();
                        let (r0, r1, r2, r3) = (
                            &r0[first..][..n],
                            &r1[first..][..n],
                            &r2[first..][..n],
                            &r3[first..][..n],
                        );
                        for (i, d) in dst.iter_mut().enumerate() {
                            *d = word(r0[i], r1[i], r2[i], r3[i]);
                        }
                    } else {
                        for (i, d) in dst.iter_mut().enumerate() {
                            let ix = first + i * sx;
                            *d = word(r0[ix], r1[ix], r2[ix], r3[ix]);
                        }
                    }
                }
            }
        }
    }

    /// Convolves one image, `input` (`ins` planes) into `out` (`outs`
    /// planes); output rows are split over the threads of tract's current
    /// executor.
    pub fn run(&self, input: &[i8], out: &mut [i8]) {
        let g = &self.geometry;
        let ([h, w], [ho, wo]) = (g.input, g.output);
        assert_eq!(input.len(), g.ins * h * w, "input is ins x h x w");
        assert_eq!(out.len(), g.outs * ho * wo, "output is outs x ho x wo");
        assert!(available(), "QConv runs only where AVX-512 VNNI or SDOT is");
        if ho == 0 || wo == 0 {
            return;
        }
        let (rows, words, c4s) = self.packed_dims();
        PACKED.with_borrow_mut(|packed| {
            let len = c4s * rows * g.stride[1] * words;
            if packed.len() < len {
                packed.resize(len, 0);
            }
            let packed = &mut packed[..len];
            self.pack(input, packed);
            let packed = &*packed;
            split_rows(out, [ho, wo], |first, planes| {
                let count = planes[0].len() / wo;
                self.rows(packed, first, count, planes)
            });
        });
    }

    /// Output rows `first .. first + count` of every plane (rows `0..count`
    /// of `planes`), from the packed input, with this CPU's kernel (which
    /// [`Self::run`] asserted it has).
    fn rows(&self, packed: &[u32], first: usize, count: usize, planes: &mut [&mut [i8]]) {
        let g = &self.geometry;
        let (rows, words, c4s) = self.packed_dims();
        assert_eq!(packed.len(), c4s * rows * g.stride[1] * words);
        assert_eq!(
            self.weights.len(),
            g.outs.div_ceil(OUTS) * c4s * g.kernel[0] * g.kernel[1] * OUTS
        );
        assert!(first + count <= g.output[0]);
        assert_eq!(planes.len(), g.outs);
        let pair = self.paired();
        // SAFETY: `run` asserted `available()`, the kernels' instructions;
        // the lengths their slices are read at are asserted above.
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        unsafe {
            if pair {
                self.rows_avx512::<true>(packed, first, count, planes)
            } else {
                self.rows_avx512::<false>(packed, first, count, planes)
            }
        };
        #[cfg(target_arch = "aarch64")]
        #[allow(unsafe_code)]
        unsafe {
            if pair {
                self.rows_sdot::<true>(packed, first, count, planes)
            } else {
                self.rows_sdot::<false>(packed, first, count, planes)
            }
        };
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = (packed, first, count, planes, pair);
    }

    /// [`Self::rows`] with AVX-512 VNNI, with a block of two half rows
    /// when `PAIR`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[allow(unsafe_code)]
    fn rows_avx512<const PAIR: bool>(
        &self,
        packed: &[u32],
        first: usize,
        count: usize,
        planes: &mut [&mut [i8]],
    ) {
        use std::arch::x86_64::*;
        let g = &self.geometry;
        let ([_, wo], [kh, kw], [sy, sx]) = (g.output, g.kernel, g.stride);
        let (rows, words, c4s) = self.packed_dims();
        let taps = c4s * kh * kw;
        let y0 = _mm512_set1_epi32(self.y0);
        let (lo, hi) = (_mm512_set1_ps(-CLAMP), _mm512_set1_ps(CLAMP));
        for (b, weights) in self.weights.chunks_exact(taps * OUTS).enumerate() {
            let outs = OUTS.min(g.outs - b * OUTS);
            let step = if PAIR { 2 } else { 1 };
            for local in (0..count).step_by(step) {
                let row = (first + local) * sy;
                // Words from this output row's input to the next's, for the
                // second half of a paired block (the same row when there is
                // no next one: its half is not stored).
                let next = if PAIR && local + 1 < count {
                    sy * sx * words
                } else {
                    0
                };
                for x0 in (0..wo).step_by(PIXELS) {
                    let mut acc = [_mm512_setzero_si512(); OUTS];
                    for c4 in 0..c4s {
                        for ky in 0..kh {
                            let line = ((c4 * rows + row + ky) * sx) * words;
                            for kx in 0..kw {
                                let at = line + (kx % sx) * words + x0 + kx / sx;
                                // In bounds: `at + PIXELS <= packed.len()`
                                // by `packed_dims` (row + ky < rows, and
                                // x0 + PIXELS + (kw - 1) / sx <= words);
                                // paired, the next row's `row + sy + ky`
                                // is below `rows` too.
                                let xv = if PAIR {
                                    let (a, b) = (&packed[at..at + 8], &packed[at + next..][..8]);
                                    // SAFETY: `a` and `b` hold 8 words each.
                                    unsafe {
                                        let a = _mm256_loadu_si256(a.as_ptr().cast());
                                        let b = _mm256_loadu_si256(b.as_ptr().cast());
                                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
                                    }
                                } else {
                                    let xs = &packed[at..at + PIXELS];
                                    // SAFETY: `xs` holds PIXELS = 16 words.
                                    unsafe { _mm512_loadu_si512(xs.as_ptr().cast()) }
                                };
                                let tap = ((c4 * kh + ky) * kw + kx) * OUTS;
                                let ws: &[i32; OUTS] =
                                    weights[tap..tap + OUTS].try_into().expect("OUTS weights");
                                for (a, &wv) in acc.iter_mut().zip(ws) {
                                    *a = _mm512_dpbusd_epi32(*a, xv, _mm512_set1_epi32(wv));
                                }
                            }
                        }
                    }
                    let n = PIXELS.min(wo - x0);
                    let mask: __mmask16 = if n == PIXELS { !0 } else { (1 << n) - 1 };
                    for (lane, a) in acc.iter().enumerate().take(outs) {
                        let o = b * OUTS + lane;
                        let v = _mm512_add_epi32(*a, _mm512_set1_epi32(self.offset[o]));
                        let f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(self.scale[o]));
                        let f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
                        // Rounds to nearest even (the default MXCSR mode),
                        // then saturates to i8.
                        let q = _mm512_add_epi32(_mm512_cvtps_epi32(f), y0);
                        let bytes = _mm512_cvtsepi32_epi8(q);
                        let dst = &mut planes[o][local * wo + x0..][..n];
                        // SAFETY: the mask writes the first n bytes, which
                        // `dst` holds (paired, n = wo <= 8).
                        unsafe { _mm_mask_storeu_epi8(dst.as_mut_ptr(), mask, bytes) };
                        if PAIR && next > 0 {
                            let dst = &mut planes[o][(local + 1) * wo..][..n];
                            let high = _mm_srli_si128::<8>(bytes);
                            // SAFETY: as above, for the next row.
                            unsafe { _mm_mask_storeu_epi8(dst.as_mut_ptr(), mask, high) };
                        }
                    }
                }
            }
        }
    }

    /// [`Self::rows`] for aarch64 with the dot-product extension:
    /// [`PIXELS`] pixels in four registers, [`OUTS`] = 4 output channels,
    /// each `sdot` taking one channel's 4 weights from a lane of the
    /// weights' register; a block of two half rows when `PAIR`.
    #[cfg(target_arch = "aarch64")]
    #[target_feature(enable = "dotprod")]
    #[allow(unsafe_code)]
    fn rows_sdot<const PAIR: bool>(
        &self,
        packed: &[u32],
        first: usize,
        count: usize,
        planes: &mut [&mut [i8]],
    ) {
        use std::arch::aarch64::*;
        let g = &self.geometry;
        let ([_, wo], [kh, kw], [sy, sx]) = (g.output, g.kernel, g.stride);
        let (rows, words, c4s) = self.packed_dims();
        let taps = c4s * kh * kw;
        let y0 = vdupq_n_s32(self.y0);
        let (lo, hi) = (vdupq_n_f32(-CLAMP), vdupq_n_f32(CLAMP));
        for (b, weights) in self.weights.chunks_exact(taps * OUTS).enumerate() {
            let outs = OUTS.min(g.outs - b * OUTS);
            let step = if PAIR { 2 } else { 1 };
            for local in (0..count).step_by(step) {
                let row = (first + local) * sy;
                // As in `rows_avx512`: the second half's words.
                let next = if PAIR && local + 1 < count {
                    sy * sx * words
                } else {
                    0
                };
                let halves = if PAIR {
                    [0, 4, next, next + 4]
                } else {
                    [0, 4, 8, 12]
                };
                for x0 in (0..wo).step_by(PIXELS) {
                    // acc[o][q]: output channel o of pixels 4q .. 4q + 3.
                    let mut acc = [[vdupq_n_s32(0); 4]; OUTS];
                    for c4 in 0..c4s {
                        for ky in 0..kh {
                            let line = ((c4 * rows + row + ky) * sx) * words;
                            for kx in 0..kw {
                                let at = line + (kx % sx) * words + x0 + kx / sx;
                                // In bounds as in `rows_avx512`.
                                let tap = ((c4 * kh + ky) * kw + kx) * OUTS;
                                let ws = &weights[tap..tap + OUTS];
                                let x = halves.map(|h| {
                                    let xs = &packed[at + h..][..4];
                                    // SAFETY: `xs` holds 4 words.
                                    unsafe { vld1q_s8(xs.as_ptr().cast()) }
                                });
                                // SAFETY: `ws` holds 4 words.
                                let w = unsafe { vld1q_s8(ws.as_ptr().cast()) };
                                for q in 0..4 {
                                    acc[0][q] = sdot::<0>(acc[0][q], x[q], w);
                                    acc[1][q] = sdot::<1>(acc[1][q], x[q], w);
                                    acc[2][q] = sdot::<2>(acc[2][q], x[q], w);
                                    acc[3][q] = sdot::<3>(acc[3][q], x[q], w);
                                }
                            }
                        }
                    }
                    let n = PIXELS.min(wo - x0);
                    for (lane, quads) in acc.iter().enumerate().take(outs) {
                        let o = b * OUTS + lane;
                        let (offset, scale) =
                            (vdupq_n_s32(self.offset[o]), vdupq_n_f32(self.scale[o]));
                        let codes = quads.map(|a| {
                            let f = vmulq_f32(vcvtq_f32_s32(vaddq_s32(a, offset)), scale);
                            let f = vminq_f32(vmaxq_f32(f, lo), hi);
                            // Rounds to nearest, ties to even.
                            vaddq_s32(vcvtnq_s32_f32(f), y0)
                        });
                        let low = vcombine_s16(vqmovn_s32(codes[0]), vqmovn_s32(codes[1]));
                        let high = vcombine_s16(vqmovn_s32(codes[2]), vqmovn_s32(codes[3]));
                        let bytes = vcombine_s8(vqmovn_s16(low), vqmovn_s16(high));
                        let mut out = [0i8; PIXELS];
                        // SAFETY: `out` holds 16 bytes.
                        unsafe { vst1q_s8(out.as_mut_ptr(), bytes) };
                        planes[o][local * wo + x0..][..n].copy_from_slice(&out[..n]);
                        if PAIR && next > 0 {
                            let half = &out[PIXELS / 2..][..n];
                            planes[o][(local + 1) * wo..][..n].copy_from_slice(half);
                        }
                    }
                }
            }
        }
    }
}

/// `acc + x . w[LANE]`: each i32 lane of `acc` plus the dot product of the
/// 4 bytes of `x` in that lane with the 4 bytes of lane `LANE` of `w`
/// (`sdot`'s indexed form, whose intrinsic is not stable Rust yet).
#[cfg(target_arch = "aarch64")]
#[inline]
#[target_feature(enable = "dotprod")]
#[allow(unsafe_code)]
fn sdot<const LANE: i32>(
    acc: std::arch::aarch64::int32x4_t,
    x: std::arch::aarch64::int8x16_t,
    w: std::arch::aarch64::int8x16_t,
) -> std::arch::aarch64::int32x4_t {
    let mut acc = acc;
    // SAFETY: one register-only instruction of the enabled extension.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {x:v}.16b, {w:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            x = in(vreg) x,
            w = in(vreg) w,
            lane = const LANE,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Requantised values are clamped to +-CLAMP before their conversion to
/// integers, which saturates them to i8 the same and keeps the conversion in
/// range.
const CLAMP: f32 = 65536.0;

thread_local! {
    /// The packed input, kept from call to call.
    static PACKED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Op for QConv {
    fn name(&self) -> StaticName {
        "QConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "int8 {}x{} stride {:?} {} -> {} channels",
            g.kernel[0], g.kernel[1], g.stride, g.ins, g.outs
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let g = &self.geometry;
        let (n, c, h, w) = match *input.shape() {
            [n, c, h, w] => (n, c, h, w),
            [c, h, w] => (1, c, h, w),
            _ => bail!(
                "QConv takes NCHW or CHW input, got shape {:?}",
                input.shape()
            ),
        };
        ensure!(
            n == 1 || self.output_rank == 4,
            "QConv: {n} images for a CHW output"
        );
        ensure!(
            c == g.ins && [h, w] == g.input,
            "QConv: input {c}x{h}x{w}; expected {}x{:?}",
            g.ins,
            g.input
        );
        let [ho, wo] = g.output;
        let mut out = Tensor::zero::<i8>(&self.output_shape(n))?;
        let input = input.try_as_plain_ram()?;
        let input = input.as_slice::<i8>()?;
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<i8>()?;
            for (image, o) in input
                .chunks_exact(c * h * w)
                .zip(out.chunks_exact_mut(g.outs * ho * wo))
            {
                self.run(image, o);
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QConv {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rank = inputs[0].rank();
        ensure!(rank == 3 || rank == 4, "QConv takes NCHW or CHW input");
        ensure!(
            inputs[0].datum_type == i8::datum_type(),
            "QConv takes i8 input"
        );
        let n = if rank == 4 {
            inputs[0].shape[0].clone()
        } else {
            1.into()
        };
        Ok(tvec!(i8::fact(self.output_shape(n))))
    }
}

/// The single value of a constant `outlet`, if it has one.
fn scalar<T: Datum + Copy>(model: &TypedModel, outlet: OutletId) -> TractResult<Option<T>> {
    Ok(constant::<T>(model, outlet)?.and_then(|v| (v.len() == 1).then(|| v[0])))
}

/// The geometry of a quantised convolution node and the rank of its output,
/// as tract's decluttering leaves them: a `Conv` on `NCHW` (or, with the
/// batch axis taken out, `CHW`) data, or a 1x1 convolution turned into an
/// `EinSum` of `[N]IHW` data by an `OI` kernel into `[N]OHW`.
/// When `outlet` is the output of a `Downsample` of axis 3 (stride `sx`) of a
/// `Downsample` of axis 2 (stride `sy`), both from index 0, as tract
/// declutters a strided 1x1 convolution: the strides and the outlet before
/// them.
fn strided_input(model: &TypedModel, outlet: OutletId) -> Option<([usize; 2], OutletId)> {
    let columns = model.node(outlet.node);
    let cols = columns.op_as::<Downsample>()?;
    let rows_outlet = *columns.inputs.first()?;
    let rows_node = model.node(rows_outlet.node);
    let rows = rows_node.op_as::<Downsample>()?;
    let plain = cols.axis == 3 && rows.axis == 2 && cols.modulo == 0 && rows.modulo == 0;
    let (sy, sx) = (
        usize::try_from(rows.stride).ok()?,
        usize::try_from(cols.stride).ok()?,
    );
    (plain && sy > 0 && sx > 0).then_some(([sy, sx], *rows_node.inputs.first()?))
}

/// The geometry of a quantised convolution node, the rank of its output and
/// the outlet it reads, as tract's decluttering leaves them: a `Conv` on
/// `NCHW` (or, with the batch axis taken out, `CHW`) data, or a 1x1
/// convolution turned into an `EinSum` of `[N]IHW` data by an `OI` kernel
/// into `[N]OHW`, strided by the `Downsample`s before it, if any (which
/// [`QConv`] then takes over).
fn quantized_geometry(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(ConvGeometry, usize, OutletId)>> {
    let i8_type = Some(i8::datum_type());
    let input = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = input.shape.as_concrete().map(|s| s.to_vec()) else {
        return Ok(None);
    };
    let out_rank = model.outlet_fact(OutletId::new(node.id, 0))?.rank();
    if let Some(conv) = node.op_as::<Conv>() {
        if conv.q_params != i8_type {
            return Ok(None);
        }
        if conv.pool_spec.data_format == DataFormat::CHW && shape.len() == 3 {
            let mut conv = conv.clone();
            conv.pool_spec.data_format = DataFormat::NCHW;
            let shape = [&[1], &shape[..]].concat();
            let geometry = ConvGeometry::spatial(&conv, &shape);
            return Ok(geometry.map(|g| (g, out_rank, node.inputs[0])));
        }
        let geometry = ConvGeometry::spatial(conv, &shape);
        return Ok(geometry.map(|g| (g, out_rank, node.inputs[0])));
    }
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if einsum.q_params != i8_type {
        return Ok(None);
    }
    let (ins, outs) = einsum.axes.to_strs();
    let chars = |s: &str| s.chars().collect::<Vec<_>>();
    let ([x, k, b, rest @ ..], [y]) = (&ins[..], &outs[..]) else {
        return Ok(None);
    };
    let (x, k, y) = (chars(x), chars(k), chars(y));
    let (&[o, i], 3..=4, 3..=4) = (&k[..], x.len(), y.len()) else {
        return Ok(None);
    };
    let (xs, ys) = (&x[x.len() - 3..], &y[y.len() - 3..]);
    let batch_ok = match (&x[..x.len() - 3], &y[..y.len() - 3]) {
        ([n], [m]) => n == m,
        _ => true,
    };
    let one_by_one = xs[0] == i
        && ys[0] == o
        && xs[1..] == ys[1..]
        && batch_ok
        && *b == o.to_string()
        && rest.iter().all(|r| r.is_empty())
        && shape.len() == x.len();
    if !one_by_one {
        return Ok(None);
    }
    let (&c, &[h, w]) = (&shape[shape.len() - 3], &shape[shape.len() - 2..]) else {
        return Ok(None);
    };
    let kernel = model.outlet_fact(node.inputs[1])?;
    let Some(&[outs, kernel_ins]) = kernel.shape.as_concrete() else {
        return Ok(None);
    };
    if kernel_ins != c {
        return Ok(None);
    }
    let mut geometry = ConvGeometry {
        ins: c,
        outs,
        kernel: [1, 1],
        stride: [1, 1],
        pad: [0, 0],
        input: [h, w],
        output: [h, w],
    };
    let mut input = node.inputs[0];
    if let Some((stride, before)) = strided_input(model, input) {
        let before_shape = model
            .outlet_fact(before)?
            .shape
            .as_concrete()
            .map(|s| s.to_vec());
        if let Some(&[n, c, h, w]) = before_shape.as_deref()
            && shape[0] == n
            && geometry.ins == c
            && geometry.output == [h.div_ceil(stride[0]), w.div_ceil(stride[1])]
        {
            geometry.stride = stride;
            geometry.input = [h, w];
            input = before;
        }
    }
    Ok(Some((geometry, out_rank, input)))
}

/// Replaces every quantised convolution of the decluttered int8 graph
/// `model` that [`QConv`] runs (i8 input and output, i8 kernel of zero point
/// 0, constant quantisation, horizontal stride up to [`MAX_STRIDE`]; see
/// `quantized_geometry` for the forms) by one, if this CPU runs it
/// ([`available`]); returns how many were replaced. Shapes must be concrete.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    if !available() {
        return Ok(0);
    }
    let i8_type = i8::datum_type();
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if node.inputs.len() != 9 {
            continue;
        }
        let Some((geometry, out_rank, input)) = quantized_geometry(model, node)? else {
            continue;
        };
        let input_type = model.outlet_fact(input)?.datum_type;
        let kernel_type = model.outlet_fact(node.inputs[1])?.datum_type;
        let output_type = model.outlet_fact(OutletId::new(id, 0))?.datum_type;
        if input_type != i8_type || kernel_type != i8_type || output_type != i8_type {
            continue;
        }
        if geometry.stride[1] > MAX_STRIDE {
            continue;
        }
        let i = &node.inputs;
        let outs = geometry.outs;
        let (Some(kernel), Some(bias), Some(k0)) = (
            constant::<i8>(model, i[1])?,
            constant::<i32>(model, i[2])?,
            constant::<i32>(model, i[5])?,
        ) else {
            continue;
        };
        let (Some(x0), Some(x_scale), Some(k_scale), Some(y0), Some(y_scale)) = (
            scalar::<i32>(model, i[3])?,
            scalar::<f32>(model, i[4])?,
            constant::<f32>(model, i[6])?,
            scalar::<i32>(model, i[7])?,
            scalar::<f32>(model, i[8])?,
        ) else {
            continue;
        };
        let bias = match bias.len() {
            1 => vec![bias[0]; outs],
            n if n == outs => bias,
            _ => continue,
        };
        let fits_i8 = |v: i32| i8::try_from(v).ok();
        let (Some(x0), Some(y0)) = (fits_i8(x0), fits_i8(y0)) else {
            continue;
        };
        if k0.iter().any(|&k| k != 0) || !(k_scale.len() == 1 || k_scale.len() == outs) {
            continue;
        }
        let q = Quantization {
            x0,
            x_scale,
            k_scale,
            y0,
            y_scale,
        };
        let op = QConv::new(&kernel, &bias, geometry, &q).with_output_rank(out_rank);
        replace_from(model, id, input, op, id)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// `QLinearConv` by its definition, in f64 with ties rounded to even.
    fn reference(
        g: &ConvGeometry,
        x: &[i8],
        kernel: &[i8],
        bias: &[i32],
        q: &Quantization,
    ) -> Vec<i8> {
        let ([h, w], [ho, wo], [kh, kw]) = (g.input, g.output, g.kernel);
        let mut out = vec![0i8; g.outs * ho * wo];
        for o in 0..g.outs {
            let k_scale = q.k_scale[if q.k_scale.len() == 1 { 0 } else { o }];
            for y in 0..ho {
                for xo in 0..wo {
                    let mut acc = bias[o] as i64;
                    for c in 0..g.ins {
                        for ky in 0..kh {
                            let Some(iy) = g.input_row(y, ky) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let ix = (xo * g.stride[1] + kx).checked_sub(g.pad[1]);
                                let Some(ix) = ix.filter(|&ix| ix < w) else {
                                    continue;
                                };
                                let v = x[(c * h + iy) * w + ix] as i64 - q.x0 as i64;
                                acc += v * kernel[((o * g.ins + c) * kh + ky) * kw + kx] as i64;
                            }
                        }
                    }
                    let m = k_scale as f64 * q.x_scale as f64 / q.y_scale as f64;
                    let r = (acc as f64 * m).round_ties_even() as i64 + q.y0 as i64;
                    out[(o * ho + y) * wo + xo] = r.clamp(-128, 127) as i8;
                }
            }
        }
        out
    }

    #[test]
    fn qconv_matches_the_definition() {
        if !available() {
            eprintln!("skipped: this CPU has neither AVX-512 VNNI nor SDOT for QConv");
            return;
        }
        let mut rng = Rng::new(8);
        // (ins, outs, h, w, k, stride, pad): the 7x7/2 stem on 3 channels,
        // 3x3/1 with channels and widths off the blocks, 3x3/2, 1x1/2, a
        // plane narrower than a pixel block.
        for (ins, outs, h, w, k, s, pad) in [
            (3, 32, 37, 29, 7, 2, 3),
            (13, 21, 9, 35, 3, 1, 1),
            (32, 32, 16, 16, 3, 1, 1),
            (20, 40, 15, 18, 3, 2, 1),
            (24, 17, 14, 22, 1, 2, 0),
            (64, 16, 6, 8, 3, 1, 1),
            (16, 20, 7, 5, 3, 1, 1),
            (12, 8, 9, 16, 3, 2, 1),
            (5, 3, 11, 40, 5, 3, 2),
        ] {
            let g = ConvGeometry::square(ins, outs, [h, w], k, s, pad);
            let x: Vec<i8> = (0..ins * h * w)
                .map(|_| rng.range(-128.0, 128.0) as i8)
                .collect();
            let kernel: Vec<i8> = (0..outs * g.taps())
                .map(|_| rng.range(-127.0, 128.0) as i8)
                .collect();
            let bias: Vec<i32> = (0..outs)
                .map(|_| rng.range(-5000.0, 5000.0) as i32)
                .collect();
            for per_channel in [false, true] {
                let k_scale = if per_channel {
                    (0..outs).map(|_| rng.range(0.001, 0.004)).collect()
                } else {
                    vec![0.002]
                };
                let q = Quantization {
                    x0: rng.range(-128.0, 20.0) as i8,
                    x_scale: 0.03,
                    k_scale,
                    y0: rng.range(-128.0, 30.0) as i8,
                    // Outputs spread over about +-30 steps.
                    y_scale: 0.015 * (g.taps() as f32).sqrt(),
                };
                let expected = reference(&g, &x, &kernel, &bias, &q);
                let op = QConv::new(&kernel, &bias, g, &q);
                let what = format!("{ins}->{outs} {k}x{k}/{s} pad {pad} at {h}x{w}");
                let pool = tract_linalg::multithread::Executor::multithread(3);
                for threads in [false, true] {
                    let mut out = vec![0x55i8; expected.len()];
                    if threads {
                        let run = || op.run(&x, &mut out);
                        tract_linalg::multithread::multithread_tract_scope(pool.clone(), run);
                    } else {
                        op.run(&x, &mut out);
                    }
                    // f32 against f64 scaling: one step apart at most, and
                    // only at a rounding tie.
                    let off: Vec<_> = (0..out.len()).filter(|&i| out[i] != expected[i]).collect();
                    for &i in &off {
                        assert!(
                            (out[i] as i32 - expected[i] as i32).abs() == 1,
                            "{what}, threads {threads}, value {i}: {} against {}",
                            out[i],
                            expected[i]
                        );
                    }
                    assert!(
                        off.len() * 1000 <= out.len(),
                        "{what}: {} values off",
                        off.len()
                    );
                    let distinct = out.iter().collect::<std::collections::HashSet<_>>().len();
                    assert!(distinct > 20, "{what}: only {distinct} distinct outputs");
                }
            }
        }
    }
}
