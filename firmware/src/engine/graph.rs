//! What substituting edgeseg's operators into tract's typed graph shares:
//! reading a convolution's constants, and replacing a node (with the ReLU
//! after it) by an operator.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::math::Max;

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

/// The value of `outlet` as f32 when it is a constant, or a constant through
/// casts (which tract's ONNX import puts on biases and decluttering folds).
fn constant(model: &TypedModel, mut outlet: OutletId) -> TractResult<Option<Vec<f32>>> {
    loop {
        if let Some(value) = &model.outlet_fact(outlet)?.konst {
            let value = value.cast_to::<f32>()?;
            let value = value.try_as_plain_ram()?;
            return Ok(Some(value.as_slice::<f32>()?.to_vec()));
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
    let mut patch = TypedModelPatch::default();
    let tap = patch.tap_model(model, model.node(id).inputs[0])?;
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
