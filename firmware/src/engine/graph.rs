//! What substituting edgeseg's operators into tract's typed graph shares:
//! reading a convolution's constants, and replacing a node (with the ReLU
//! after it) by an operator.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::math::Max;
use tract_onnx::tract_core::ops::nn::DataFormat;

/// A float convolution's input shape and constant weights, as f32.
pub(super) struct ConvConstants {
    /// The input's shape, concrete, rank 4.
    pub shape: Vec<usize>,
    /// The kernel as stored by the operator.
    pub kernel: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
}

impl ConvConstants {
    /// The constants of `node`, a convolution-like operator with inputs
    /// (data, kernel, bias) and `outs` output channels, when its data is f32
    /// of a concrete rank-4 shape and its kernel and bias are constants
    /// (through casts); a scalar bias is repeated for every channel.
    pub fn of(model: &TypedModel, node: &TypedNode, outs: usize) -> TractResult<Option<Self>> {
        let input = model.outlet_fact(node.inputs[0])?;
        let shape = match input.shape.as_concrete() {
            Some(s) if s.len() == 4 && input.datum_type == f32::datum_type() => s.to_vec(),
            _ => return Ok(None),
        };
        if node.inputs.len() != 3 {
            return Ok(None);
        }
        let (Some(kernel), Some(bias)) = (
            constant(model, node.inputs[1])?,
            constant(model, node.inputs[2])?,
        ) else {
            return Ok(None);
        };
        let bias = match bias.len() {
            1 => vec![bias[0]; outs],
            n if n == outs => bias,
            _ => return Ok(None),
        };
        Ok(Some(ConvConstants {
            shape,
            kernel,
            bias,
        }))
    }
}

/// The value of `outlet` as `T` when it is a constant, or a constant through
/// casts (which tract's ONNX import puts on biases and decluttering folds).
pub(super) fn constant<T: Datum + Copy>(
    model: &TypedModel,
    mut outlet: OutletId,
) -> TractResult<Option<Vec<T>>> {
    loop {
        if let Some(value) = &model.outlet_fact(outlet)?.konst {
            let value = value.cast_to::<T>()?;
            let value = value.try_as_plain_ram()?;
            return Ok(Some(value.as_slice::<T>()?.to_vec()));
        }
        let node = model.node(outlet.node);
        match node.op_as::<Cast>() {
            Some(_) if node.inputs.len() == 1 => outlet = node.inputs[0],
            _ => return Ok(None),
        }
    }
}

/// Replaces node `id` of `model` by `op` on the node's first input; when
/// `with_relu` is given and a ReLU alone follows the node, by `with_relu(op)`
/// in place of both.
pub(super) fn replace<O: TypedOp>(
    model: &mut TypedModel,
    id: usize,
    op: O,
    with_relu: Option<fn(O) -> O>,
) -> TractResult<()> {
    let relu = match with_relu {
        Some(with_relu) => sole_relu_after(model, id)?.map(|relu| (with_relu, relu)),
        None => None,
    };
    let (op, last) = match relu {
        Some((with_relu, relu)) => (with_relu(op), relu),
        None => (op, id),
    };
    replace_from(model, id, model.node(id).inputs[0], op, last)
}

/// Replaces node `id` of `model` and the nodes after it up to `last` (whose
/// output `op`'s takes over) by `op` on `input`.
pub(super) fn replace_from<O: TypedOp>(
    model: &mut TypedModel,
    id: usize,
    input: OutletId,
    op: O,
    last: usize,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let tap = patch.tap_model(model, input)?;
    let wire = patch.wire_node(&model.node(id).name, op, &[tap])?;
    patch.shunt_outside(model, OutletId::new(last, 0), wire[0])?;
    patch.apply(model)
}

/// The node after `id` when it is `id`'s only consumer and a ReLU (`Max`
/// against a constant zero), and `id` is not a model output.
pub(super) fn sole_relu_after(model: &TypedModel, id: usize) -> TractResult<Option<usize>> {
    let outlet = OutletId::new(id, 0);
    let successors = &model.node(id).outputs[0].successors;
    if successors.len() != 1 || model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    let next = model.node(successors[0].node);
    let is_max = next.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Max>());
    if !is_max || next.inputs.len() != 2 {
        return Ok(None);
    }
    let other = next.inputs[1 - successors[0].slot];
    let zero = model
        .outlet_fact(other)?
        .uniform
        .as_ref()
        .and_then(|u| u.cast_to_scalar::<f32>().ok())
        .is_some_and(|z| z == 0.0);
    Ok(zero.then_some(next.id))
}

/// Evaluates operator `op`, which convolves each `ins`-channel image of the
/// `NCHW` f32 `input` on its own: `run(image, [h, w], out)` must write every
/// value of `out`, the `out_dims(h, w)` (`[channels, height, width]`) output
/// of the image.
pub(super) fn eval_images(
    op: &str,
    input: TValue,
    ins: usize,
    out_dims: impl Fn(usize, usize) -> TractResult<[usize; 3]>,
    run: impl Fn(&[f32], [usize; 2], &mut [f32]),
) -> TractResult<TVec<TValue>> {
    let &[n, c, h, w] = input.shape() else {
        bail!("{op} takes NCHW input, got shape {:?}", input.shape());
    };
    ensure!(c == ins, "{op}: {c} input channels; expected {ins}");
    let [oc, oh, ow] = out_dims(h, w)?;
    let shape = [n, oc, oh, ow];
    if c * h * w == 0 || oc * oh * ow == 0 {
        return Ok(tvec!(Tensor::zero::<f32>(&shape)?.into_tvalue()));
    }
    let input = input.try_as_plain_ram()?;
    let input = input.as_slice::<f32>()?;
    let mut out = Tensor::zero::<f32>(&shape)?;
    {
        let mut view = out.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        for (image, o) in input
            .chunks_exact(c * h * w)
            .zip(out.chunks_exact_mut(oc * oh * ow))
        {
            run(image, [h, w], o);
        }
    }
    Ok(tvec!(out.into_tvalue()))
}

/// Where a 2-D convolution's taps fall: its channels, kernel, stride,
/// padding and plane sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    /// Input channels.
    pub ins: usize,
    /// Output channels.
    pub outs: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Padding before the image (top, left); the padding after follows from
    /// the plane sizes.
    pub pad: [usize; 2],
    /// Input plane height and width.
    pub input: [usize; 2],
    /// Output plane height and width.
    pub output: [usize; 2],
}

impl ConvGeometry {
    /// The geometry of `conv` on an input of concrete `shape` (`NCHW`) when
    /// it is a float 2-D convolution of one group, undilated, on `NCHW` data
    /// with an `OIHW` kernel: the convolutions edgeseg's operators run.
    pub(super) fn of(conv: &Conv, shape: &[usize]) -> Option<ConvGeometry> {
        conv.q_params
            .is_none()
            .then(|| ConvGeometry::spatial(conv, shape))
            .flatten()
    }

    /// [`Self::of`] for float and quantised convolutions alike: the
    /// geometry of a 2-D convolution of one group, undilated, on `NCHW`
    /// data with an `OIHW` kernel.
    pub(super) fn spatial(conv: &Conv, shape: &[usize]) -> Option<ConvGeometry> {
        let spec = &conv.pool_spec;
        let plain = conv.group == 1
            && conv.kernel_fmt == KernelFormat::OIHW
            && spec.data_format == DataFormat::NCHW
            && spec.kernel_shape.len() == 2
            && shape.len() == 4
            && spec.dilations().iter().all(|&d| d == 1);
        if !plain {
            return None;
        }
        let padding = spec.computed_padding(&shape[2..]);
        let strides = spec.strides();
        Some(ConvGeometry {
            ins: spec.input_channels,
            outs: spec.output_channels,
            kernel: [spec.kernel_shape[0], spec.kernel_shape[1]],
            stride: [strides[0], strides[1]],
            pad: [padding[0].pad_before, padding[1].pad_before],
            input: [shape[2], shape[3]],
            output: [padding[0].convoluted, padding[1].convoluted],
        })
    }

    /// Kernel taps of one output value: `ins x kh x kw`.
    pub fn taps(&self) -> usize {
        self.ins * self.kernel[0] * self.kernel[1]
    }

    /// The input row under output row `y` and kernel row `ky`, if inside
    /// the image (else it is padding).
    pub fn input_row(&self, y: usize, ky: usize) -> Option<usize> {
        (y * self.stride[0] + ky)
            .checked_sub(self.pad[0])
            .filter(|&iy| iy < self.input[0])
    }

    /// The convolution by its definition, in f64: `kernel` `OIHW`, one
    /// `bias` per output channel, one image of `ins` planes.
    #[cfg(test)]
    pub(super) fn reference(&self, input: &[f32], kernel: &[f32], bias: &[f32]) -> Vec<f32> {
        let ([h, w], [ho, wo], [kh, kw]) = (self.input, self.output, self.kernel);
        let mut out = vec![0.0f32; self.outs * ho * wo];
        for o in 0..self.outs {
            for y in 0..ho {
                for x in 0..wo {
                    let mut acc = bias[o] as f64;
                    for c in 0..self.ins {
                        for ky in 0..kh {
                            let Some(iy) = self.input_row(y, ky) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let ix = (x * self.stride[1] + kx).checked_sub(self.pad[1]);
                                let Some(ix) = ix.filter(|&ix| ix < w) else {
                                    continue;
                                };
                                acc += input[(c * h + iy) * w + ix] as f64
                                    * kernel[((o * self.ins + c) * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                    out[(o * ho + y) * wo + x] = acc as f32;
                }
            }
        }
        out
    }

    /// A geometry for tests: `k x k` kernel, stride `s`, padding `pad` on
    /// every side.
    #[cfg(test)]
    pub(super) fn square(
        ins: usize,
        outs: usize,
        [h, w]: [usize; 2],
        k: usize,
        s: usize,
        pad: usize,
    ) -> Self {
        ConvGeometry {
            ins,
            outs,
            kernel: [k, k],
            stride: [s, s],
            pad: [pad, pad],
            input: [h, w],
            output: [(h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1],
        }
    }
}

/// Asserts that `run(relu, out)`, an operator's run on one image (with the
/// ReLU after it when `relu`), writes every value of `expected` within
/// `tolerance` of its largest magnitude, and the ReLU of those values, on
/// this thread and on a pool of 3 threads; `what` names the case.
#[cfg(test)]
pub(super) fn assert_runs_match(
    what: &str,
    expected: &[f32],
    tolerance: f32,
    run: impl Fn(bool, &mut [f32]),
) {
    let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let pool = tract_linalg::multithread::Executor::multithread(3);
    for threads in [false, true] {
        let mut out = vec![f32::NAN; expected.len()];
        let mut out_relu = vec![f32::NAN; expected.len()];
        let mut both = || {
            run(false, &mut out);
            run(true, &mut out_relu);
        };
        if threads {
            tract_linalg::multithread::multithread_tract_scope(pool.clone(), both);
        } else {
            both();
        }
        for (i, ((a, r), e)) in out.iter().zip(&out_relu).zip(expected).enumerate() {
            assert!(
                (a - e).abs() <= tolerance * scale,
                "{what}, threads {threads}, value {i}: {a} against {e}"
            );
            assert_eq!(
                *r,
                a.max(0.0),
                "{what}, threads {threads}: ReLU of value {i}"
            );
        }
    }
}
