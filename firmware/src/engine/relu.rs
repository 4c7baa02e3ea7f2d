//! ReLUs folded into the matrix products of tract's im2col convolutions.
//!
//! tract fuses `max(x, 0)` into the matrix product it follows, but its im2col
//! convolutions end with a reshape (`OptMatMul -> IntoShape -> max`), and its
//! rule for reaching over a reshape looks for the operator in the form it has
//! before code generation. So on the optimised graph each such ReLU is a pass
//! of its own over the convolution's output. [`fuse_over_reshapes`] moves
//! those ReLUs before the reshape (the same values, as the ReLU is per
//! element) and optimises again, so tract's own rule fuses them.

use tract_linalg::BinOp;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::OptBinByScalar;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;

/// Moves every `max(x, 0)` between an `OptMatMul`'s reshape and the rest of
/// the optimised graph `model` before the reshape, then optimises again;
/// returns how many moved.
pub fn fuse_over_reshapes(model: &mut TypedModel) -> TractResult<usize> {
    let mut moved = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(max) = node.op_as::<OptBinByScalar>() else {
            continue;
        };
        if max.linalg_op != BinOp::Max || node.inputs.len() != 2 || !is_zero(model, node.inputs[1])?
        {
            continue;
        }
        let reshape = model.node(node.inputs[0].node);
        if !reshape.op_is::<IntoShape>() || !sole_consumer(model, reshape.id)? {
            continue;
        }
        let product = model.node(reshape.inputs[0].node);
        if !product.op_is::<OptMatMul>() || !sole_consumer(model, product.id)? {
            continue;
        }
        let fact = model.outlet_fact(reshape.inputs[0])?;
        if !fact.datum_type.is_float() {
            continue;
        }
        let zero = Tensor::zero_dt(fact.datum_type, &vec![1; fact.rank()])?;
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, reshape.inputs[0])?;
        let zero = patch.add_const(format!("{}.zero", node.name), zero)?;
        let relu = patch.wire_node(&node.name, node.op.clone(), &[input, zero])?;
        let out = patch.wire_node(&reshape.name, reshape.op.clone(), &relu)?;
        patch.shunt_outside(model, OutletId::new(id, 0), out[0])?;
        patch.apply(model)?;
        moved += 1;
    }
    if moved > 0 {
        model.optimize()?;
    }
    Ok(moved)
}

/// Whether `outlet` is a constant zero (of any shape).
fn is_zero(model: &TypedModel, outlet: OutletId) -> TractResult<bool> {
    let fact = model.outlet_fact(outlet)?;
    let Some(value) = fact.uniform.as_ref().or(fact.konst.as_ref()) else {
        return Ok(false);
    };
    Ok(value.len() >= 1
        && value
            .cast_to::<f32>()?
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .iter()
            .all(|&v| v == 0.0))
}

/// Whether node `id` has one output, consumed by one node, and is not a
/// model output.
fn sole_consumer(model: &TypedModel, id: usize) -> TractResult<bool> {
    let node = model.node(id);
    Ok(node.outputs.len() == 1
        && node.outputs[0].successors.len() == 1
        && !model.output_outlets()?.contains(&OutletId::new(id, 0)))
}
