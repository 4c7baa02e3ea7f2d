//! Quantising f32 to i8 with AVX-512, as a tract operator substituted for
//! tract's `QuantizeLinearI8` in the int8 graph at load (see [`substitute`]).
//!
//! In an int8 model the residual additions run in float between a
//! dequantisation and a quantisation. tract quantises one value at a time
//! with a software round-to-even: 0.15 ms for each of the demo model's 32 x
//! 48 x 64 activations, 1.5 ms a frame in all. Here 16 values go through
//! one multiply, one rounding conversion (to nearest even, as tract
//! rounds) and one saturating narrowing: the same codes, bit for bit. On
//! aarch64 the plain loop compiles to NEON's rounding conversions.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::QuantizeLinearI8;

/// `y = saturate(round_even(x * scale) + zero_point)`, f32 to i8, any shape:
/// tract's `QuantizeLinearI8` (whose `scale` is the reciprocal of the
/// quantisation step).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeI8 {
    scale: f32,
    zero_point: i8,
}

impl Eq for QuantizeI8 {}

impl QuantizeI8 {
    /// Quantisation by `scale` (codes per unit) around `zero_point`.
    pub fn new(scale: f32, zero_point: i8) -> QuantizeI8 {
        QuantizeI8 { scale, zero_point }
    }

    /// Quantises `xs` into `ys`, of the same length.
    pub fn run(&self, xs: &[f32], ys: &mut [i8]) {
        assert_eq!(xs.len(), ys.len(), "one code per value");
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: `available()` found AVX-512.
            #[allow(unsafe_code)]
            unsafe {
                self.run_avx512(xs, ys)
            };
            return;
        }
        // Vectorised on aarch64 (`frintn`); a libm call per value on x86
        // CPUs without SSE4.1, which `substitute` leaves to tract.
        for (x, y) in xs.iter().zip(ys) {
            let q = (x * self.scale).clamp(-256.0, 256.0).round_ties_even() as i32;
            *y = (q + self.zero_point as i32).clamp(-128, 127) as i8;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(unsafe_code)]
    fn run_avx512(&self, xs: &[f32], ys: &mut [i8]) {
        use std::arch::x86_64::*;
        let scale = _mm512_set1_ps(self.scale);
        let zero = _mm512_set1_epi32(self.zero_point as i32);
        // Products beyond +-256 saturate either way; clamping them first
        // keeps the conversion in range (it would turn 3e9 into i32::MIN).
        let (lo, hi) = (_mm512_set1_ps(-256.0), _mm512_set1_ps(256.0));
        for (x, y) in xs.chunks(16).zip(ys.chunks_mut(16)) {
            let n = x.len();
            let mask: __mmask16 = if n == 16 { !0 } else { (1 << n) - 1 };
            // SAFETY: the masks read and write the chunks' n values.
            let v = unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr()) };
            let v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, scale), lo), hi);
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(v), zero);
            unsafe { _mm_mask_storeu_epi8(y.as_mut_ptr(), mask, _mm512_cvtsepi32_epi8(q)) };
        }
    }
}

/// Whether [`QuantizeI8`] runs faster here than tract's quantisation: on
/// x86-64 with AVX-512, and on aarch64.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cfg!(target_arch = "aarch64")
    }
}

impl Op for QuantizeI8 {
    fn name(&self) -> StaticName {
        "QuantizeI8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale: {} zero_point: {}",
            self.scale, self.zero_point
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizeI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut out = Tensor::zero::<i8>(input.shape())?;
        {
            let input = input.try_as_plain_ram()?;
            let mut view = out.try_as_plain_ram_mut()?;
            self.run(input.as_slice::<f32>()?, view.as_slice_mut::<i8>()?);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizeI8 {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].datum_type == f32::datum_type(),
            "QuantizeI8 takes f32"
        );
        Ok(tvec!(i8::fact(inputs[0].shape.clone())))
    }
}

/// Replaces every `QuantizeLinearI8` of f32 values with a plain i8 output in
/// the decluttered graph `model` by [`QuantizeI8`] where it is faster
/// ([`available`]); returns how many were replaced.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    if !available() {
        return Ok(0);
    }
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(q) = node
            .op_as::<ElementWiseOp>()
            .and_then(|e| e.0.downcast_ref::<QuantizeLinearI8>())
        else {
            continue;
        };
        let plain = model.outlet_fact(node.inputs[0])?.datum_type == f32::datum_type()
            && model.outlet_fact(OutletId::new(id, 0))?.datum_type == i8::datum_type();
        if !plain {
            continue;
        }
        let op = QuantizeI8::new(q.scale, q.zero_point);
        super::graph::replace(model, id, op, None)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::round_ties_to_even;

    /// tract's `quantize_linear_f32_i8`, with the zero point added in i64:
    /// tract's own adds it in i32, which overflows past +-2^31.
    fn tracts(x: f32, scale: f32, zero_point: i8) -> i8 {
        let rounded = round_ties_to_even(x * scale) as i32 as i64;
        (rounded + zero_point as i64).clamp(-128, 127) as i8
    }

    #[test]
    fn quantize_gives_tracts_codes() {
        // Ties (x * scale = k + 0.5), both signs, values far out of range,
        // a length off the vector width.
        let mut xs: Vec<f32> = (-700..700).map(|i| i as f32 * 0.25).collect();
        xs.extend([1e9, -1e9, 3.0e38, -3.0e38, 0.0, -0.0]);
        xs.extend((0..37).map(|i| (i as f32 * 0.731).sin() * 300.0));
        for (scale, zero_point) in [(1.0, 0), (2.0, -14), (0.37, 100), (53.99, -128)] {
            let op = QuantizeI8::new(scale, zero_point);
            let mut got = vec![0x55i8; xs.len()];
            op.run(&xs, &mut got);
            for (i, (&x, &y)) in xs.iter().zip(&got).enumerate() {
                let expected = tracts(x, scale, zero_point);
                assert_eq!(
                    y, expected,
                    "value {i} ({x}) at scale {scale}, zero point {zero_point}"
                );
            }
        }
    }
}
