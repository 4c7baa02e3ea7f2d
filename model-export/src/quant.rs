//! Static post-training int8 quantisation of a [`Graph`] into an ONNX file that
//! tract runs with integer kernels.
//!
//! - Convolutions become `QLinearConv` with uint8 activations (per-tensor scale
//!   and zero point from calibration) and symmetric int8 weights, per tensor
//!   (the default: tract fuses its requantisation) or per output channel. A
//!   ReLU that is a convolution's only reader is absorbed into the output range.
//! - With per-tensor weights, cross-layer equalisation (Nagel et al. 2019,
//!   "Data-Free Quantization Through Weight Equalization and Bias Correction")
//!   first rescales each convolution → ReLU → convolution pair so the channels'
//!   weight ranges match, and bias correction then removes the mean output
//!   shift the weight rounding causes.
//! - Max pooling runs on the uint8 values. Add, Concat, Resize, Pad, Crop and
//!   transposed convolutions (tract has no integer ConvTranspose) run in float
//!   between `DequantizeLinear` and `QuantizeLinear`.
//! - The output `logits` stays float, so the file is a drop-in replacement.
//!
//! Activation ranges come from running calibration images through tract on the
//! float graph with every intermediate value exposed.

use std::collections::HashMap;

use firmware::model_info::ModelInfo;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{ModelProto, TensorProto};
use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::graph::{Conv, Graph, Op, Value};
use crate::onnx::{
    ProtoBuilder, conv_attributes, float_node, tensor_f32, to_model, value_info, value_name,
};

/// How weights are quantised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightScheme {
    /// One scale per tensor, after cross-layer equalisation (fast in tract).
    PerTensor,
    /// One scale per output channel (more accurate without equalisation,
    /// slower in tract: its requantisation is not fused).
    PerChannel,
}

/// How activation ranges are taken from calibration values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// The given percentile of the values (and 100 minus it for the low end),
    /// e.g. 99.99, which ignores rare outliers.
    Percentile(f64),
}

/// The 8-bit type activations are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// uint8 with a zero point in 0..=255 (onnxruntime's default).
    U8,
    /// int8 with a zero point in -128..=127.
    I8,
}

impl std::str::FromStr for Calibration {
    type Err = Error;

    /// `minmax`, or a percentile in 50..=100 such as `99.99`.
    fn from_str(s: &str) -> Result<Calibration> {
        match s {
            "minmax" => Ok(Calibration::MinMax),
            p => match p.parse::<f64>() {
                Ok(p) if (50.0..=100.0).contains(&p) => Ok(Calibration::Percentile(p)),
                _ => Err(Error::Parse {
                    expected: "minmax or a percentile in 50..100",
                    given: s.into(),
                }),
            },
        }
    }
}

impl std::str::FromStr for Activations {
    type Err = Error;

    /// `i8` or `u8`.
    fn from_str(s: &str) -> Result<Activations> {
        match s {
            "i8" => Ok(Activations::I8),
            "u8" => Ok(Activations::U8),
            _ => Err(Error::Parse {
                expected: "i8 or u8",
                given: s.into(),
            }),
        }
    }
}

/// Quantisation options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantOptions {
    /// Storage type of activations.
    pub activations: Activations,
    /// Weight scheme.
    pub weights: WeightScheme,
    /// Activation calibration.
    pub calibration: Calibration,
    /// Cross-layer equalisation (per-tensor weights only).
    pub equalize: bool,
    /// Bias correction from the calibration means.
    pub bias_correction: bool,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions {
            activations: Activations::I8,
            weights: WeightScheme::PerTensor,
            calibration: Calibration::Percentile(99.99),
            equalize: true,
            bias_correction: true,
        }
    }
}

/// Per-value statistics from calibration.
#[derive(Clone, Debug, Default)]
struct ValueStats {
    /// Samples of the value (every element of small values, a strided subset of large ones).
    samples: Vec<f32>,
    min: f32,
    max: f32,
    /// Mean of each channel.
    channel_mean: Vec<f64>,
    images: usize,
}

const SAMPLES_PER_IMAGE: usize = 65_536;

/// Runs `inputs` (planar normalised images) through the float `graph` in tract
/// and collects statistics of every value.
fn calibrate(graph: &Graph, inputs: &[Vec<f32>]) -> Result<Vec<ValueStats>> {
    if inputs.is_empty() {
        return Err(Error::Data("calibration needs at least one image".into()));
    }
    let [c, h, w] = graph.input_shape();
    let info = placeholder_info(graph);
    let mut proto = to_model(graph, &info);
    let values: Vec<Value> = (0..=graph.nodes().len()).collect();
    if let Some(g) = proto.graph.as_mut() {
        g.output.clear();
        for &v in &values {
            let [vc, vh, vw] = graph.shape(v);
            g.output.push(value_info(
                &value_name(graph, v),
                DataType::Float,
                &[1, vc, vh, vw],
            ));
        }
    }
    let tract = |e: TractError| Error::Onnx {
        what: "calibration model".into(),
        message: format!("{e:#}"),
    };
    let plan = tract_onnx::onnx()
        .model_for_proto_model(&proto)
        .and_then(|m| m.with_input_fact(0, f32::fact([1, c, h, w]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(tract)?;
    let mut stats: Vec<ValueStats> = values
        .iter()
        .map(|&v| ValueStats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            channel_mean: vec![0.0; graph.shape(v)[0]],
            ..Default::default()
        })
        .collect();
    for input in inputs {
        if input.len() != c * h * w {
            return Err(Error::Data(format!(
                "a calibration image has {} values; the model takes {}",
                input.len(),
                c * h * w
            )));
        }
        let x = Tensor::from_shape(&[1, c, h, w], input).map_err(tract)?;
        let outputs = plan.run(tvec!(x.into())).map_err(tract)?;
        for (s, out) in stats.iter_mut().zip(&outputs) {
            let view = out.to_plain_array_view::<f32>().map_err(tract)?;
            let data: Vec<f32> = view.iter().copied().collect();
            let plane = data.len() / s.channel_mean.len();
            for (ch, chunk) in data.chunks(plane).enumerate() {
                s.channel_mean[ch] += chunk.iter().map(|&v| v as f64).sum::<f64>() / plane as f64;
            }
            for &v in &data {
                s.min = s.min.min(v);
                s.max = s.max.max(v);
            }
            let stride = data.len().div_ceil(SAMPLES_PER_IMAGE);
            s.samples.extend(data.iter().step_by(stride));
            s.images += 1;
        }
    }
    for s in &mut stats {
        s.channel_mean
            .iter_mut()
            .for_each(|m| *m /= s.images as f64);
    }
    Ok(stats)
}

pub(crate) fn placeholder_info(graph: &Graph) -> ModelInfo {
    let [_, h, w] = graph.input_shape();
    let classes = graph.shape(graph.output())[0];
    ModelInfo {
        class_names: (0..classes).map(|i| format!("class{i}")).collect(),
        palette: vec![[0, 0, 0]; classes],
        void: None,
        input_size: firmware::Size::new(w as u32, h as u32),
        mean: [0.0; 3],
        std: [1.0; 3],
        architecture: "calibration".into(),
        val_miou: f64::NAN,
        precision: "float32".into(),
    }
}

/// The range `[lo, hi]` that `calibration` keeps of `stats`, always holding 0.
fn range(stats: &ValueStats, calibration: Calibration) -> (f32, f32) {
    let (lo, hi) = match calibration {
        Calibration::MinMax => (stats.min, stats.max),
        Calibration::Percentile(p) => {
            let mut s = stats.samples.clone();
            s.sort_by(f32::total_cmp);
            let at = |q: f64| s[((q / 100.0) * (s.len() - 1) as f64).round() as usize];
            (at(100.0 - p), at(p))
        }
    };
    (lo.min(0.0), hi.max(0.0))
}

/// Scale and zero point covering `[lo, hi]` (which holds 0) in 256 steps.
fn affine(lo: f32, hi: f32, ty: Activations) -> (f32, i32) {
    let scale = ((hi - lo) / 255.0).max(1e-8);
    let zp = (-lo / scale).round().clamp(0.0, 255.0) as i32;
    (scale, if ty == Activations::I8 { zp - 128 } else { zp })
}

fn per_out_max(weights: &[f32], outputs: usize) -> Vec<f32> {
    weights
        .chunks(weights.len() / outputs)
        .map(|c| c.iter().fold(0.0f32, |m, w| m.max(w.abs())))
        .collect()
}

/// Cross-layer equalisation of every conv → ReLU → conv chain whose middle
/// values are read only along the chain. Returns the number of pairs rescaled.
fn equalize(graph: &mut Graph) -> usize {
    let mut pairs = Vec::new();
    for (i, node) in graph.nodes().iter().enumerate() {
        let Op::Conv(_) = node.op else { continue };
        let conv_out = Graph::value_of(i);
        if graph.readers(conv_out) != 1 {
            continue;
        }
        let Some(relu) = graph.nodes().iter().position(|n| n.inputs == [conv_out]) else {
            continue;
        };
        if graph.nodes()[relu].op != Op::Relu || graph.readers(Graph::value_of(relu)) != 1 {
            continue;
        }
        let relu_out = Graph::value_of(relu);
        let Some(next) = graph.nodes().iter().position(|n| n.inputs == [relu_out]) else {
            continue;
        };
        if matches!(graph.nodes()[next].op, Op::Conv(_)) {
            pairs.push((i, next));
        }
    }
    for _ in 0..4 {
        for &(a, b) in &pairs {
            let (first, second) = conv_pair(graph, a, b);
            let channels = first.weights.shape[0];
            let r1 = per_out_max(&first.weights.data, channels);
            let [o2, i2, kh, kw] = second.weights.shape;
            let mut r2 = vec![0.0f32; i2];
            for o in 0..o2 {
                for (ci, r) in r2.iter_mut().enumerate() {
                    let start = (o * i2 + ci) * kh * kw;
                    for w in &second.weights.data[start..start + kh * kw] {
                        *r = r.max(w.abs());
                    }
                }
            }
            let s: Vec<f32> = r1
                .iter()
                .zip(&r2)
                .map(|(&a, &b)| {
                    if a > 0.0 && b > 0.0 {
                        (a / b).sqrt()
                    } else {
                        1.0
                    }
                })
                .collect();
            let per_out = first.weights.data.len() / channels;
            for (ch, chunk) in first.weights.data.chunks_mut(per_out).enumerate() {
                chunk.iter_mut().for_each(|w| *w /= s[ch]);
            }
            if let Some(bias) = first.bias.as_mut() {
                bias.iter_mut().zip(&s).for_each(|(b, s)| *b /= s);
            }
            for o in 0..o2 {
                for (ci, &sc) in s.iter().enumerate() {
                    let start = (o * i2 + ci) * kh * kw;
                    second.weights.data[start..start + kh * kw]
                        .iter_mut()
                        .for_each(|w| *w *= sc);
                }
            }
        }
    }
    pairs.len()
}

/// Mutable access to two different convolutions of `graph`.
fn conv_pair(graph: &mut Graph, a: usize, b: usize) -> (&mut Conv, &mut Conv) {
    let nodes = graph.nodes_mut();
    let (lo, hi) = nodes.split_at_mut(b);
    match (&mut lo[a].op, &mut hi[0].op) {
        (Op::Conv(x), Op::Conv(y)) => (x, y),
        _ => unreachable!("pairs are convolutions"),
    }
}

/// Symmetric int8 weights and their scales (one, or one per output channel).
fn quantize_weights(conv: &Conv, scheme: WeightScheme) -> (Vec<i8>, Vec<f32>) {
    let outputs = conv.weights.shape[0];
    let maxes = match scheme {
        WeightScheme::PerTensor => {
            vec![conv.weights.data.iter().fold(0.0f32, |m, w| m.max(w.abs()))]
        }
        WeightScheme::PerChannel => per_out_max(&conv.weights.data, outputs),
    };
    let scales: Vec<f32> = maxes.iter().map(|m| (m / 127.0).max(1e-12)).collect();
    let per_out = conv.weights.data.len() / outputs;
    let q = conv
        .weights
        .data
        .iter()
        .enumerate()
        .map(|(j, w)| {
            let s = scales[if scales.len() == 1 { 0 } else { j / per_out }];
            (w / s).round().clamp(-127.0, 127.0) as i8
        })
        .collect();
    (q, scales)
}

fn zero_point(name: &str, v: i32, ty: Activations) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: match ty {
            Activations::U8 => DataType::Uint8,
            Activations::I8 => DataType::Int8,
        } as i32,
        raw_data: vec![v as u8],
        ..Default::default()
    }
}

fn tensor_i8(name: &str, dims: &[usize], v: &[i8]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Int8 as i32,
        raw_data: v.iter().map(|&x| x as u8).collect(),
        ..Default::default()
    }
}

fn tensor_i32(name: &str, v: &[i32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: DataType::Int32 as i32,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn scalar_f32(name: &str, v: f32) -> TensorProto {
    tensor_f32(name, &[], &[v])
}

/// What [`quantize`] did, for the report.
#[derive(Clone, Debug, Default)]
pub struct QuantSummary {
    /// Convolutions turned into `QLinearConv`.
    pub qlinear_convs: usize,
    /// Nodes left in float between dequantise and quantise.
    pub float_nodes: usize,
    /// Conv → ReLU → conv pairs equalised.
    pub equalized_pairs: usize,
    /// Convolutions whose bias was corrected.
    pub bias_corrected: usize,
}

/// Quantises the float `graph` (batch norms folded) with calibration images
/// `calib` into an int8 ONNX model carrying `info` (its precision set to int8).
pub fn quantize(
    graph: &Graph,
    info: &ModelInfo,
    calib: &[Vec<f32>],
    options: QuantOptions,
) -> Result<(ModelProto, QuantSummary)> {
    let mut graph = graph.clone();
    if graph
        .op_counts()
        .iter()
        .any(|(op, _)| *op == "BatchNormalization")
    {
        graph.fold_batchnorm();
    }
    let mut summary = QuantSummary::default();
    if options.equalize && options.weights == WeightScheme::PerTensor {
        summary.equalized_pairs = equalize(&mut graph);
    }
    let stats = calibrate(&graph, calib)?;

    // Encoding of each value that is stored as uint8: (scale, zero point).
    let mut encodings: HashMap<Value, (f32, i32)> = HashMap::new();
    let encoding = |v: Value, encodings: &mut HashMap<Value, (f32, i32)>| {
        *encodings.entry(v).or_insert_with(|| {
            let (lo, hi) = range(&stats[v], options.calibration);
            affine(lo, hi, options.activations)
        })
    };
    // The ReLU absorbed by each convolution, if any: conv node -> relu node.
    let mut absorbed: HashMap<usize, usize> = HashMap::new();
    for (i, node) in graph.nodes().iter().enumerate() {
        if let (Op::Relu, Some(src)) = (&node.op, node.inputs[0].checked_sub(1))
            && matches!(graph.nodes()[src].op, Op::Conv(_))
            && graph.readers(node.inputs[0]) == 1
        {
            absorbed.insert(src, i);
        }
    }
    let absorbed_relus: std::collections::HashSet<usize> = absorbed.values().copied().collect();

    let mut b = ProtoBuilder::default();
    // Names of the float and the uint8 form of each value, as they get made.
    let mut float_name: HashMap<Value, String> = HashMap::from([(Graph::INPUT, "image".into())]);
    let mut q_name: HashMap<Value, String> = HashMap::new();
    let mut alias: HashMap<Value, Value> = HashMap::new(); // absorbed relu -> conv value
    let params = |b: &mut ProtoBuilder, base: &str, (scale, zp): (f32, i32)| {
        (
            b.constant(scalar_f32(&format!("{base}.scale"), scale)),
            b.constant(zero_point(
                &format!("{base}.zero_point"),
                zp,
                options.activations,
            )),
        )
    };
    macro_rules! quantized {
        ($v:expr) => {{
            let v: Value = $v;
            if let Some(n) = q_name.get(&v) {
                n.clone()
            } else {
                let f = float_name[&v].clone();
                let enc = encoding(v, &mut encodings);
                let (s, z) = params(&mut b, &format!("{f}.q"), enc);
                let out = format!("{f}.q8");
                b.node(
                    &format!("{f}.quantize"),
                    "QuantizeLinear",
                    &[&f, &s, &z],
                    &[&out],
                    vec![],
                );
                q_name.insert(v, out.clone());
                out
            }
        }};
    }
    macro_rules! float {
        ($v:expr) => {{
            let v: Value = $v;
            if let Some(n) = float_name.get(&v) {
                n.clone()
            } else {
                let q = q_name[&v].clone();
                let enc = encoding(v, &mut encodings);
                let (s, z) = params(&mut b, &format!("{q}.dq"), enc);
                let out = format!("{q}.f32");
                b.node(
                    &format!("{q}.dequantize"),
                    "DequantizeLinear",
                    &[&q, &s, &z],
                    &[&out],
                    vec![],
                );
                float_name.insert(v, out.clone());
                out
            }
        }};
    }
    for (i, node) in graph.nodes().iter().enumerate() {
        let out = Graph::value_of(i);
        let name = node.name.clone();
        let inputs: Vec<Value> = node
            .inputs
            .iter()
            .map(|v| *alias.get(v).unwrap_or(v))
            .collect();
        if absorbed_relus.contains(&i) {
            alias.insert(out, inputs[0]);
            continue;
        }
        match &node.op {
            Op::Conv(conv) => {
                let x = quantized!(inputs[0]);
                let x_enc = encoding(inputs[0], &mut encodings);
                // The output range is the absorbed ReLU's, if there is one.
                let range_of = absorbed.get(&i).map_or(out, |&r| Graph::value_of(r));
                let y_enc = {
                    let (lo, hi) = range(&stats[range_of], options.calibration);
                    affine(lo, hi, options.activations)
                };
                encodings.insert(out, y_enc);
                let (wq, w_scales) = quantize_weights(conv, options.weights);
                let outputs = conv.weights.shape[0];
                let mut bias = conv.bias.clone().unwrap_or_else(|| vec![0.0; outputs]);
                if options.bias_correction {
                    // E[(Wq - W) x] per output channel, from the input's channel means.
                    let [_, ci, kh, kw] = conv.weights.shape;
                    let means = &stats[inputs[0]].channel_mean;
                    for (o, b) in bias.iter_mut().enumerate() {
                        let s = w_scales[if w_scales.len() == 1 { 0 } else { o }];
                        let mut shift = 0.0f64;
                        for (c, mean) in means.iter().enumerate().take(ci) {
                            for k in 0..kh * kw {
                                let j = (o * ci + c) * kh * kw + k;
                                shift += (wq[j] as f32 * s - conv.weights.data[j]) as f64 * mean;
                            }
                        }
                        *b -= shift as f32;
                    }
                    summary.bias_corrected += 1;
                }
                let bias_q: Vec<i32> = bias
                    .iter()
                    .enumerate()
                    .map(|(o, b)| {
                        let s = x_enc.0 * w_scales[if w_scales.len() == 1 { 0 } else { o }];
                        (b / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32
                    })
                    .collect();
                let w = b.constant(tensor_i8(
                    &format!("{name}.weight.i8"),
                    &conv.weights.shape,
                    &wq,
                ));
                let ws = b.constant(tensor_f32(
                    &format!("{name}.weight.scale"),
                    if w_scales.len() == 1 {
                        &[]
                    } else {
                        std::slice::from_ref(&outputs)
                    },
                    &w_scales,
                ));
                let wz_values = vec![0i8; w_scales.len()];
                let wz = b.constant(tensor_i8(
                    &format!("{name}.weight.zero_point"),
                    if w_scales.len() == 1 {
                        &[]
                    } else {
                        std::slice::from_ref(&outputs)
                    },
                    &wz_values,
                ));
                let bq = b.constant(tensor_i32(&format!("{name}.bias.i32"), &bias_q));
                let (xs, xz) = params(&mut b, &format!("{name}.x"), x_enc);
                let (ys, yz) = params(&mut b, &format!("{name}.y"), y_enc);
                let y = format!("{name}.q8");
                b.node(
                    &name,
                    "QLinearConv",
                    &[&x, &xs, &xz, &w, &ws, &wz, &ys, &yz, &bq],
                    &[&y],
                    conv_attributes(&conv.weights, conv.stride, conv.pads),
                );
                q_name.insert(out, y);
                summary.qlinear_convs += 1;
            }
            Op::MaxPool { .. } => {
                let x = quantized!(inputs[0]);
                let enc = encoding(inputs[0], &mut encodings);
                encodings.insert(out, enc);
                let y = format!("{name}.q8");
                float_node(&mut b, &graph, i, &[x], &y);
                q_name.insert(out, y);
            }
            _ => {
                let ins: Vec<String> = inputs.iter().map(|&v| float!(v)).collect();
                let y = name.clone();
                float_node(&mut b, &graph, i, &ins, &y);
                float_name.insert(out, y);
                summary.float_nodes += 1;
            }
        }
    }
    // The output, as float logits.
    let last = *alias.get(&graph.output()).unwrap_or(&graph.output());
    let logits = float!(last);
    b.node("logits", "Identity", &[&logits], &["logits"], vec![]);
    let mut info = info.clone();
    info.precision = "int8".into();
    let proto = b.finish(
        graph.input_shape(),
        graph.shape(graph.output()),
        DataType::Float,
        &info,
    );
    Ok((proto, summary))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::graph::{ConvTranspose, Weights};
    use firmware::engine::Engine;

    fn rng_values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut rng = firmware::rng::Rng::new(seed);
        (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * scale).collect()
    }

    fn conv(seed: u64, o: usize, i: usize, k: usize) -> Op {
        let fan_in = (i * k * k) as f32;
        let mut data = rng_values(seed, o * i * k * k, (6.0 / fan_in).sqrt());
        // Uneven channel ranges, as trained networks have: equalisation matters.
        let per = i * k * k;
        for (c, chunk) in data.chunks_mut(per).enumerate() {
            let s = 0.2 + 3.0 * ((c * 7) % 5) as f32 / 4.0;
            chunk.iter_mut().for_each(|w| *w *= s);
        }
        Op::Conv(Conv {
            weights: Weights::new([o, i, k, k], data).unwrap(),
            bias: Some(rng_values(seed + 1, o, 0.1)),
            stride: [1, 1],
            pads: [k / 2; 4],
        })
    }

    /// A small U-Net-like graph with every op kind the quantiser handles.
    pub(crate) fn small_graph() -> Graph {
        let mut g = Graph::new([3, 32, 48]);
        let a = g.add("c1", conv(1, 8, 3, 3), &[Graph::INPUT]).unwrap();
        let a = g.add("c1.relu", Op::Relu, &[a]).unwrap();
        let p = g
            .add(
                "pool",
                Op::MaxPool {
                    kernel: [2, 2],
                    stride: [2, 2],
                    pads: [0; 4],
                },
                &[a],
            )
            .unwrap();
        let b = g.add("c2", conv(3, 16, 8, 3), &[p]).unwrap();
        let b = g.add("c2.relu", Op::Relu, &[b]).unwrap();
        let b = g.add("c3", conv(5, 16, 16, 3), &[b]).unwrap();
        let b = g.add("c3.relu", Op::Relu, &[b]).unwrap();
        let up = g
            .add(
                "up",
                Op::ConvTranspose(ConvTranspose {
                    weights: Weights::new([16, 8, 2, 2], rng_values(7, 512, 0.3)).unwrap(),
                    bias: Some(vec![0.05; 8]),
                    stride: [2, 2],
                    pads: [0; 4],
                    output_padding: [0, 0],
                }),
                &[b],
            )
            .unwrap();
        let cat = g.add("cat", Op::Concat, &[a, up]).unwrap();
        let d = g.add("c4", conv(9, 8, 16, 3), &[cat]).unwrap();
        let d = g.add("c4.relu", Op::Relu, &[d]).unwrap();
        let s = g.add("skip", Op::Add, &[d, a]).unwrap();
        g.add("head", conv(11, 5, 8, 1), &[s]).unwrap();
        g
    }

    /// Smooth random images: neighbouring pixels correlate, like photographs.
    pub(crate) fn images(seed: u64, n: usize, [c, h, w]: [usize; 3]) -> Vec<Vec<f32>> {
        (0..n)
            .map(|i| {
                let mut v = vec![0.0; c * h * w];
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            let n = firmware::rng::fbm(
                                x as f32 / 9.0,
                                y as f32 / 9.0,
                                (seed as u32) * 31 + (i * 3 + ch) as u32,
                            );
                            v[(ch * h + y) * w + x] = n * 4.0 - 2.0;
                        }
                    }
                }
                v
            })
            .collect()
    }

    fn info(g: &Graph) -> ModelInfo {
        let mut info = placeholder_info(g);
        info.architecture = "test".into();
        info
    }

    fn agreement(float: &mut Engine, int8: &mut Engine, inputs: &[Vec<f32>]) -> f64 {
        let (mut same, mut total) = (0, 0);
        let classes = float.info().num_classes();
        for x in inputs {
            let (a, b) = (float.run(x).unwrap(), int8.run(x).unwrap());
            let plane = a.len() / classes;
            let arg = |v: &[f32], p: usize| {
                (0..classes)
                    .max_by(|&i, &j| v[i * plane + p].total_cmp(&v[j * plane + p]))
                    .unwrap()
            };
            for p in 0..plane {
                same += usize::from(arg(a, p) == arg(b, p));
                total += 1;
            }
        }
        same as f64 / total as f64
    }

    #[test]
    fn int8_model_runs_integer_convolutions_and_agrees_with_float() {
        let g = small_graph();
        let info = info(&g);
        let calib = images(1, 4, g.input_shape());
        let test = images(2, 2, g.input_shape());
        let float_bytes = prost::Message::encode_to_vec(&to_model(&g, &info));
        let mut float = Engine::from_bytes(&float_bytes, "float").unwrap();
        let schemes = [
            (Activations::I8, WeightScheme::PerTensor),
            (Activations::U8, WeightScheme::PerTensor),
            (Activations::I8, WeightScheme::PerChannel),
        ];
        for (activations, weights) in schemes {
            let options = QuantOptions {
                activations,
                weights,
                ..Default::default()
            };
            let (proto, summary) = quantize(&g, &info, &calib, options).unwrap();
            assert_eq!(summary.qlinear_convs, 5, "{summary:?}");
            let bytes = prost::Message::encode_to_vec(&proto);
            let mut int8 = Engine::from_bytes(&bytes, "int8").unwrap();
            assert_eq!(int8.info().precision, "int8");
            let ops = int8.op_counts();
            let kernels = int8.matmul_kernels();
            let integer = kernels.iter().filter(|k| k.integer).count();
            let fused = kernels
                .iter()
                .filter(|k| k.integer && k.fused_requantization)
                .count();
            // Every QLinearConv is an integer kernel; the transposed
            // convolution stays float, in edgeseg's own operator (no tract
            // matrix kernel).
            assert_eq!(
                (integer, kernels.len()),
                (5, 5),
                "{weights:?}: {kernels:#?}"
            );
            assert!(ops.iter().any(|(op, _)| op == "Upsample2"), "{ops:?}");
            if weights == WeightScheme::PerTensor {
                assert_eq!(fused, 5, "per-tensor requantisation is fused: {kernels:#?}");
                assert!(!ops.iter().any(|(op, _)| op == "QSumB"), "{ops:?}");
            }
            let agree = agreement(&mut float, &mut int8, &test);
            assert!(agree > 0.9, "{weights:?}: argmax agreement {agree}");
        }
    }
}
