//! Max pooling over `NCHW` planes as two passes of contiguous row maxima, a
//! tract operator substituted into the typed graph at load (see
//! [`substitute`]).
//!
//! tract's pooling visits each output's window through its generic patch
//! machinery: 0.76 ms for the demo model's 3x3 stride-2 pooling of 32 channels
//! at 96x128, against 0.04 ms in onnxruntime (BENCHMARKS.md). Here each output
//! row is the element-wise maximum of its window's input rows (a loop the
//! compiler vectorises), then a maximum across each window's columns; the
//! padding never wins, as in ONNX.

use tract_linalg::multithread::current_tract_executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::MaxPool;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::blas::{scratch, split_work};

/// A value type [`RowMaxPool`] pools: f32, or i8 in an int8 graph (whose
/// quantisation is monotonic, so the maximum of the codes is the code of the
/// maximum).
pub trait Pooled: Datum + Copy + PartialOrd {
    /// A value no input is below: the padding, which never wins.
    const LOWEST: Self;
    /// Runs `f` on this thread's row buffer of at least `len` values (kept
    /// from call to call; its contents are whatever the last call left).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

thread_local! {
    /// The row buffers, kept from frame to frame (two padded rows).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_I8: std::cell::RefCell<Vec<i8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Pooled for f32 {
    const LOWEST: f32 = f32::NEG_INFINITY;
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        SCRATCH.with_borrow_mut(|buf| f(scratch(buf, len)))
    }
}

impl Pooled for i8 {
    const LOWEST: i8 = i8::MIN;
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [i8]) -> R) -> R {
        SCRATCH_I8.with_borrow_mut(|buf| {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            f(&mut buf[..len])
        })
    }
}

/// 2-D max pooling of an `NCHW` input ([`Pooled`]: f32 or i8) of a fixed
/// size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowMaxPool {
    kernel: [usize; 2],
    stride: [usize; 2],
    /// Padding before each axis (top, left).
    pad: [usize; 2],
    /// Input and output plane sizes, `[h, w]`.
    input: [usize; 2],
    output: [usize; 2],
}

impl RowMaxPool {
    /// Pooling of `input`-sized planes into `output`-sized ones.
    pub fn new(
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
        input: [usize; 2],
        output: [usize; 2],
    ) -> RowMaxPool {
        assert!(kernel.iter().chain(&stride).all(|&v| v > 0));
        RowMaxPool {
            kernel,
            stride,
            pad,
            input,
            output,
        }
    }

    /// Pools every plane of `input` into `out`, planes split over the threads
    /// of tract's current executor.
    pub fn run<T: Pooled>(&self, input: &[T], out: &mut [T]) {
        let ([h, w], [ho, wo]) = (self.input, self.output);
        let planes: Vec<(&[T], &mut [T])> = input
            .chunks_exact(h * w)
            .zip(out.chunks_exact_mut(ho * wo))
            .collect();
        let width = self.padded_width();
        split_work(&current_tract_executor(), planes, |(src, dst)| {
            T::with_scratch(2 * width, |buf| {
                let (row, full) = buf.split_at_mut(width);
                self.plane(src, dst, row, full);
            })
        });
    }

    /// Length of the padded row buffer: the input row with `pad` before it
    /// and enough after it for the last window.
    fn padded_width(&self) -> usize {
        let ([_, w], [_, wo]) = (self.input, self.output);
        let reach = (wo.max(1) - 1) * self.stride[1] + self.kernel[1];
        reach.max(self.pad[1] + w)
    }

    /// Pools one plane. `row` (at least [`Self::padded_width`] long) holds the
    /// window's vertical maximum with [`Pooled::LOWEST`] in the padding; `full` the maximum
    /// of every window start, of which the strided ones are kept. Every pass
    /// runs over contiguous slices, which the compiler vectorises.
    fn plane<T: Pooled>(&self, src: &[T], dst: &mut [T], row: &mut [T], full: &mut [T]) {
        let ([h, w], [_, wo]) = (self.input, self.output);
        let ([kh, kw], [sy, sx], [pt, pl]) = (self.kernel, self.stride, self.pad);
        let starts = self.padded_width() + 1 - kw;
        for (oy, out) in dst.chunks_exact_mut(wo).enumerate() {
            // The window's input rows, clipped to the plane.
            let top = (oy * sy) as isize - pt as isize;
            let rows = top.max(0) as usize..((top + kh as isize).max(0) as usize).min(h);
            row.fill(T::LOWEST);
            // `if v > m` rather than `f32::max`, whose NaN rules keep it scalar.
            let inner = &mut row[pl..pl + w];
            for y in rows {
                for (m, &v) in inner.iter_mut().zip(&src[y * w..(y + 1) * w]) {
                    *m = if v > *m { v } else { *m };
                }
            }
            let full = &mut full[..starts];
            full.copy_from_slice(&row[..starts]);
            for dx in 1..kw {
                for (m, &v) in full.iter_mut().zip(&row[dx..dx + starts]) {
                    *m = if v > *m { v } else { *m };
                }
            }
            for (ox, o) in out.iter_mut().enumerate() {
                *o = full[ox * sx];
            }
        }
    }
}

impl Op for RowMaxPool {
    fn name(&self) -> StaticName {
        "RowMaxPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}x{} stride {}x{}, {}x{} -> {}x{}",
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.stride[1],
            self.input[0],
            self.input[1],
            self.output[0],
            self.output[1]
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for RowMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let &[n, c, h, w] = input.shape() else {
            bail!("RowMaxPool takes NCHW input, got shape {:?}", input.shape());
        };
        ensure!(
            [h, w] == self.input,
            "input {h}x{w}; expected {:?}",
            self.input
        );
        let [ho, wo] = self.output;
        let mut out = Tensor::zero_dt(input.datum_type(), &[n, c, ho, wo])?;
        {
            let input = input.try_as_plain_ram()?;
            let mut view = out.try_as_plain_ram_mut()?;
            if input.datum_type() == i8::datum_type() {
                self.run(input.as_slice::<i8>()?, view.as_slice_mut::<i8>()?);
            } else {
                self.run(input.as_slice::<f32>()?, view.as_slice_mut::<f32>()?);
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for RowMaxPool {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(shape.rank() == 4, "RowMaxPool takes NCHW input");
        Ok(tvec!(inputs[0].datum_type.fact([
            shape[0].clone(),
            shape[1].clone(),
            self.output[0].into(),
            self.output[1].into()
        ])))
    }
}

/// Replaces every 2-D `NCHW` max pooling of f32 or plain i8 values of the
/// typed graph `model`
/// (fixed input size, dilation 1, no index output) with [`RowMaxPool`];
/// returns how many were replaced.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(pool) = node.op_as::<MaxPool>() else {
            continue;
        };
        let input = model.outlet_fact(node.inputs[0])?;
        let Some(shape) = input.shape.as_concrete() else {
            continue;
        };
        let spec = &pool.pool_spec;
        let pooled = [f32::datum_type(), i8::datum_type()];
        if !pooled.contains(&input.datum_type)
            || shape.len() != 4
            || pool.with_index_outputs.is_some()
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || spec.dilations().iter().any(|&d| d != 1)
        {
            continue;
        }
        let padding = spec.computed_padding(&shape[2..]);
        let strides = spec.strides();
        let op = RowMaxPool::new(
            [spec.kernel_shape[0], spec.kernel_shape[1]],
            [strides[0], strides[1]],
            [padding[0].pad_before, padding[1].pad_before],
            [shape[2], shape[3]],
            [padding[0].convoluted, padding[1].convoluted],
        );
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, node.inputs[0])?;
        let wire = patch.wire_node(&node.name, op, &[tap])?;
        patch.shunt_outside(model, OutletId::new(id, 0), wire[0])?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Max pooling by its definition.
    fn direct(p: &RowMaxPool, planes: usize, input: &[f32]) -> Vec<f32> {
        let ([h, w], [ho, wo]) = (p.input, p.output);
        let mut out = Vec::new();
        for c in 0..planes {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut m = f32::NEG_INFINITY;
                    for dy in 0..p.kernel[0] {
                        for dx in 0..p.kernel[1] {
                            let y = (oy * p.stride[0] + dy) as isize - p.pad[0] as isize;
                            let x = (ox * p.stride[1] + dx) as isize - p.pad[1] as isize;
                            if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                                m = m.max(input[(c * h + y as usize) * w + x as usize]);
                            }
                        }
                    }
                    out.push(m);
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_with_padding_and_threads() {
        // 3x3 stride 2 padding 1 (the ResNet stem's), and uneven shapes.
        for (kernel, stride, pad, [h, w]) in [
            ([3, 3], [2, 2], [1, 1], [13, 17]),
            ([3, 3], [2, 2], [1, 1], [96, 128]),
            ([2, 3], [1, 2], [0, 1], [5, 4]),
            ([2, 2], [2, 2], [0, 0], [2, 3]),
            ([3, 3], [2, 2], [1, 1], [1, 1]),
        ] {
            let out = |n: usize, k: usize, s: usize, p: usize| (n + 2 * p - k) / s + 1;
            let (ho, wo) = (
                out(h, kernel[0], stride[0], pad[0]).max(1),
                out(w, kernel[1], stride[1], pad[1]).max(1),
            );
            let pool = RowMaxPool::new(kernel, stride, pad, [h, w], [ho, wo]);
            let planes = 5;
            // Negative values too: the padding must never win.
            let input: Vec<f32> = (0..planes * h * w)
                .map(|i| ((i * 7919 % 1013) as f32) - 700.0)
                .collect();
            let expected = direct(&pool, planes, &input);
            let mut got = vec![f32::NAN; planes * ho * wo];
            pool.run(&input, &mut got);
            assert_eq!(got, expected, "{kernel:?} {stride:?} {pad:?} {h}x{w}");
            let executor = tract_linalg::multithread::Executor::multithread(3);
            let mut threaded = vec![f32::NAN; planes * ho * wo];
            tract_linalg::multithread::multithread_tract_scope(executor, || {
                pool.run(&input, &mut threaded)
            });
            assert_eq!(threaded, expected);
            // The same pooling of i8 codes, those of an int8 graph.
            let codes: Vec<i8> = input.iter().map(|&v| (v as i32 % 128) as i8).collect();
            let as_f32: Vec<f32> = codes.iter().map(|&v| v as f32).collect();
            let expected: Vec<i8> = direct(&pool, planes, &as_f32)
                .iter()
                .map(|&v| v as i8)
                .collect();
            let mut got = vec![0x55i8; planes * ho * wo];
            pool.run(&codes, &mut got);
            assert_eq!(got, expected, "i8: {kernel:?} {stride:?} {pad:?} {h}x{w}");
        }
    }
}
