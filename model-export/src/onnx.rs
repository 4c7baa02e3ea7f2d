//! [`Graph`] to ONNX and back, with the protobuf types tract ships
//! (`tract_onnx::pb`) encoded by prost.
//!
//! Files written here use opset 13, name their input `image` (`1x3xHxW`
//! float) and their output `logits` (`1xCxHxW` float), and carry the
//! [`ModelInfo`] as `metadata_props`.

use std::collections::HashMap;
use std::path::Path;

use firmware::model_info::ModelInfo;
use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::type_proto::{Tensor as TensorType, Value as TypeValue};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::error::{Error, Result};
use crate::graph::{BatchNorm, Conv, ConvTranspose, Graph, Op, ResizeMode, Value, Weights};

/// ONNX operator set of the files written here.
pub const OPSET: i64 = 13;
/// ONNX IR version of the files written here (ONNX 1.13 and later read it).
pub const IR_VERSION: i64 = 8;
/// Name of the image input.
pub const INPUT_NAME: &str = "image";
/// Name of the logits output.
pub const OUTPUT_NAME: &str = "logits";

/// An ONNX attribute.
pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

/// An integer ONNX attribute.
pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// A float ONNX attribute.
pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// A string ONNX attribute.
pub fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A float tensor stored as raw little-endian bytes.
pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int64 tensor.
pub fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A value-info for a float tensor of fixed shape.
pub fn value_info(name: &str, elem: DataType, dims: &[usize]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorType {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Accumulates the nodes and initializers of an ONNX graph.
#[derive(Debug, Default)]
pub struct ProtoBuilder {
    /// Nodes in topological order.
    pub nodes: Vec<NodeProto>,
    /// Constant tensors.
    pub initializers: Vec<TensorProto>,
}

impl ProtoBuilder {
    /// Adds a node of `op_type` and returns nothing: its outputs are named by the caller.
    pub fn node(
        &mut self,
        name: &str,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            name: name.into(),
            op_type: op_type.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attributes,
            ..Default::default()
        });
    }

    /// Adds a constant and returns its name.
    pub fn constant(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name.clone();
        self.initializers.push(tensor);
        name
    }

    /// Wraps the graph into a model with `info` as metadata.
    pub fn finish(
        self,
        input: [usize; 3],
        output: [usize; 3],
        output_type: DataType,
        info: &ModelInfo,
    ) -> ModelProto {
        let [c, h, w] = input;
        let [k, oh, ow] = output;
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "edgeseg".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: format!(
                "{} semantic segmentation ({} classes, {})",
                info.architecture,
                info.num_classes(),
                info.precision
            ),
            graph: Some(GraphProto {
                name: info.architecture.clone(),
                node: self.nodes,
                initializer: self.initializers,
                input: vec![value_info(INPUT_NAME, DataType::Float, &[1, c, h, w])],
                output: vec![value_info(OUTPUT_NAME, output_type, &[1, k, oh, ow])],
                ..Default::default()
            }),
            metadata_props: info
                .to_props()
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
    }
}

/// The ONNX name of `value` in `graph`.
pub fn value_name(graph: &Graph, value: Value) -> String {
    if value == Graph::INPUT {
        INPUT_NAME.into()
    } else if value == graph.output() {
        OUTPUT_NAME.into()
    } else {
        graph.nodes()[value - 1].name.clone()
    }
}

fn to_i64(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// The attributes of a plain (ungrouped, undilated) 2-D convolution with `weights`.
pub fn conv_attributes(
    weights: &Weights,
    stride: [usize; 2],
    pads: [usize; 4],
) -> Vec<AttributeProto> {
    let [_, _, kh, kw] = weights.shape;
    vec![
        attr_ints("kernel_shape", &to_i64(&[kh, kw])),
        attr_ints("strides", &to_i64(&stride)),
        attr_ints("pads", &to_i64(&pads)),
        attr_ints("dilations", &[1, 1]),
        attr_int("group", 1),
    ]
}

/// Adds a float convolution's weights (and bias, if any) as constants named
/// after node `name`, and returns their names in ONNX input order.
fn conv_constants(
    b: &mut ProtoBuilder,
    name: &str,
    weights: &Weights,
    bias: Option<&[f32]>,
) -> Vec<String> {
    let mut names = vec![b.constant(tensor_f32(
        &format!("{name}.weight"),
        &weights.shape,
        &weights.data,
    ))];
    if let Some(bias) = bias {
        names.push(b.constant(tensor_f32(&format!("{name}.bias"), &[bias.len()], bias)));
    }
    names
}

/// Writes one float node of `graph` (node `i`) into `b`, reading its inputs by
/// the names `input_names` and writing its output as `output`.
pub fn float_node(
    b: &mut ProtoBuilder,
    graph: &Graph,
    i: usize,
    input_names: &[String],
    output: &str,
) {
    let node = &graph.nodes()[i];
    let name = node.name.as_str();
    let ins: Vec<&str> = input_names.iter().map(String::as_str).collect();
    match &node.op {
        Op::Conv(conv) => {
            let inputs = conv_constants(b, name, &conv.weights, conv.bias.as_deref());
            let mut inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            inputs.insert(0, ins[0]);
            let attributes = conv_attributes(&conv.weights, conv.stride, conv.pads);
            b.node(name, "Conv", &inputs, &[output], attributes);
        }
        Op::ConvTranspose(conv) => {
            let inputs = conv_constants(b, name, &conv.weights, conv.bias.as_deref());
            let mut inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            inputs.insert(0, ins[0]);
            let mut attributes = conv_attributes(&conv.weights, conv.stride, conv.pads);
            attributes.push(attr_ints("output_padding", &to_i64(&conv.output_padding)));
            b.node(name, "ConvTranspose", &inputs, &[output], attributes);
        }
        Op::BatchNorm(bn) => {
            let c = bn.gamma.len();
            let params = [
                ("scale", &bn.gamma),
                ("bias", &bn.beta),
                ("mean", &bn.mean),
                ("var", &bn.var),
            ]
            .map(|(what, v)| b.constant(tensor_f32(&format!("{name}.{what}"), &[c], v)));
            let mut inputs = vec![ins[0]];
            inputs.extend(params.iter().map(String::as_str));
            b.node(
                name,
                "BatchNormalization",
                &inputs,
                &[output],
                vec![attr_float("epsilon", bn.epsilon)],
            );
        }
        Op::Relu => b.node(name, "Relu", &ins, &[output], vec![]),
        Op::MaxPool {
            kernel,
            stride,
            pads,
        } => b.node(
            name,
            "MaxPool",
            &ins,
            &[output],
            vec![
                attr_ints("kernel_shape", &to_i64(kernel)),
                attr_ints("strides", &to_i64(stride)),
                attr_ints("pads", &to_i64(pads)),
            ],
        ),
        Op::Add => b.node(name, "Add", &ins, &[output], vec![]),
        Op::Concat => b.node(name, "Concat", &ins, &[output], vec![attr_int("axis", 1)]),
        Op::Resize { scale, mode } => {
            let s = *scale as f32;
            let scales = b.constant(tensor_f32(
                &format!("{name}.scales"),
                &[4],
                &[1.0, 1.0, s, s],
            ));
            let (mode, transform) = match mode {
                ResizeMode::Nearest => ("nearest", "asymmetric"),
                ResizeMode::LinearAlignCorners => ("linear", "align_corners"),
                ResizeMode::LinearHalfPixel => ("linear", "half_pixel"),
            };
            let mut attributes = vec![
                attr_string("mode", mode),
                attr_string("coordinate_transformation_mode", transform),
            ];
            if mode == "nearest" {
                attributes.push(attr_string("nearest_mode", "floor"));
            }
            b.node(
                name,
                "Resize",
                &[ins[0], "", &scales],
                &[output],
                attributes,
            );
        }
        Op::Pad { bottom, right } => {
            let pads = b.constant(tensor_i64(
                &format!("{name}.pads"),
                &[8],
                &[0, 0, 0, 0, 0, 0, *bottom as i64, *right as i64],
            ));
            b.node(
                name,
                "Pad",
                &[ins[0], &pads],
                &[output],
                vec![attr_string("mode", "constant")],
            );
        }
        Op::Crop { height, width } => {
            let starts = b.constant(tensor_i64(&format!("{name}.starts"), &[2], &[0, 0]));
            let ends = b.constant(tensor_i64(
                &format!("{name}.ends"),
                &[2],
                &[*height as i64, *width as i64],
            ));
            let axes = b.constant(tensor_i64(&format!("{name}.axes"), &[2], &[2, 3]));
            b.node(
                name,
                "Slice",
                &[ins[0], &starts, &ends, &axes],
                &[output],
                vec![],
            );
        }
    }
}

/// The float ONNX model of `graph` with `info` as metadata.
pub fn to_model(graph: &Graph, info: &ModelInfo) -> ModelProto {
    let mut b = ProtoBuilder::default();
    for (i, node) in graph.nodes().iter().enumerate() {
        let inputs: Vec<String> = node.inputs.iter().map(|&v| value_name(graph, v)).collect();
        let output = value_name(graph, Graph::value_of(i));
        float_node(&mut b, graph, i, &inputs, &output);
    }
    b.finish(
        graph.input_shape(),
        graph.shape(graph.output()),
        DataType::Float,
        info,
    )
}

/// Encodes `model` and writes it to `path` through a temporary file.
pub fn write_model(model: &ModelProto, path: &Path) -> Result<()> {
    crate::io::write_atomic(path, &model.encode_to_vec())
}

/// Reads an ONNX file.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_model(&bytes, &path.display().to_string())
}

/// Decodes the bytes of an ONNX file; `what` names it in errors.
pub fn decode_model(bytes: &[u8], what: &str) -> Result<ModelProto> {
    ModelProto::decode(bytes).map_err(|e| Error::Onnx {
        what: what.into(),
        message: format!("not an ONNX protobuf: {e}"),
    })
}

fn tensor_values_f32(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn tensor_values_i64(t: &TensorProto) -> Option<Vec<i64>> {
    if t.data_type != DataType::Int64 as i32 {
        return None;
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    Some(
        t.raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// Reads a float ONNX model made of the ops [`Op`] covers (as written by
/// [`to_model`], or by PyTorch's exporter for such networks) into a [`Graph`].
/// `Identity`, `Dropout` and `Constant` nodes are accepted; anything else is an
/// error naming the node.
pub fn from_model(model: &ModelProto) -> Result<Graph> {
    let fail = |node: &str, what: String| Error::Onnx {
        what: format!("node {node}"),
        message: what,
    };
    let g = model.graph.as_ref().ok_or_else(|| Error::Onnx {
        what: "the model".into(),
        message: "has no graph".into(),
    })?;
    let mut consts: HashMap<String, TensorProto> = g
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let inputs: Vec<&ValueInfoProto> = g
        .input
        .iter()
        .filter(|i| !consts.contains_key(&i.name))
        .collect();
    let [input] = inputs[..] else {
        return Err(Error::Onnx {
            what: "the model".into(),
            message: format!("has {} inputs; expected one image", inputs.len()),
        });
    };
    let dims: Vec<i64> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(dimension::Value::DimValue(v)) => v,
                        _ => -1,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![],
    };
    let [1, c, h, w] = dims[..] else {
        return Err(Error::Onnx {
            what: format!("input {}", input.name),
            message: format!("shape {dims:?}; expected a fixed 1xCxHxW"),
        });
    };
    if c < 1 || h < 1 || w < 1 {
        return Err(Error::Onnx {
            what: format!("input {}", input.name),
            message: format!("shape {dims:?}; expected a fixed 1xCxHxW"),
        });
    }
    let mut graph = Graph::new([c as usize, h as usize, w as usize]);
    let mut values: HashMap<String, Value> = HashMap::from([(input.name.clone(), Graph::INPUT)]);
    let mut names = std::collections::HashSet::new();
    for (n, node) in g.node.iter().enumerate() {
        let label = if node.name.is_empty() {
            format!("#{n} ({})", node.op_type)
        } else {
            node.name.clone()
        };
        let mut unique = if node.name.is_empty() {
            format!("{}_{n}", node.op_type)
        } else {
            node.name.replace(['/', ':'], "_")
        };
        while !names.insert(unique.clone()) {
            unique.push('_');
        }
        let attr = |key: &str| node.attribute.iter().find(|a| a.name == key);
        let ints = |key: &str, default: &[i64]| -> Vec<usize> {
            attr(key)
                .map(|a| a.ints.clone())
                .unwrap_or_else(|| default.to_vec())
                .into_iter()
                .map(|v| v as usize)
                .collect()
        };
        let value = |i: usize| -> Result<Value> {
            let name = node.input.get(i).filter(|s| !s.is_empty());
            name.and_then(|s| values.get(s).copied()).ok_or_else(|| {
                fail(
                    &label,
                    format!("input {i} ({name:?}) is not a computed value"),
                )
            })
        };
        let constant_f32 = |i: usize| -> Result<Option<Vec<f32>>> {
            match node.input.get(i).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(name) => consts
                    .get(name)
                    .and_then(tensor_values_f32)
                    .map(Some)
                    .ok_or_else(|| fail(&label, format!("input {name} is not a float constant"))),
            }
        };
        let weights = |i: usize| -> Result<Weights> {
            let name = &node.input[i];
            let t = consts
                .get(name)
                .ok_or_else(|| fail(&label, format!("weights {name} are not a constant")))?;
            let shape: [usize; 4] = t
                .dims
                .iter()
                .map(|&d| d as usize)
                .collect::<Vec<_>>()
                .try_into()
                .map_err(|_| fail(&label, format!("weights of shape {:?}", t.dims)))?;
            Weights::new(shape, tensor_values_f32(t).unwrap_or_default())
                .map_err(|e| fail(&label, e.to_string()))
        };
        let check_plain = || -> Result<()> {
            if attr("group").is_some_and(|a| a.i != 1)
                || ints("dilations", &[1, 1]).iter().any(|&d| d != 1)
            {
                return Err(fail(
                    &label,
                    "grouped or dilated convolutions are not supported".into(),
                ));
            }
            if attr("auto_pad").is_some_and(|a| a.s != b"NOTSET") {
                return Err(fail(
                    &label,
                    "auto_pad is not supported; use explicit pads".into(),
                ));
            }
            Ok(())
        };
        let op = match node.op_type.as_str() {
            "Constant" => {
                let t = attr("value").and_then(|a| a.t.clone()).ok_or_else(|| {
                    fail(
                        &label,
                        "only tensor-valued Constant nodes are supported".into(),
                    )
                })?;
                consts.insert(node.output[0].clone(), t);
                continue;
            }
            "Identity" | "Dropout" => {
                let v = value(0)?;
                values.insert(node.output[0].clone(), v);
                continue;
            }
            "Conv" => {
                check_plain()?;
                let weights = weights(1)?;
                let pads = ints("pads", &[0, 0, 0, 0]);
                Op::Conv(Conv {
                    weights,
                    bias: constant_f32(2)?,
                    stride: ints("strides", &[1, 1]).try_into().unwrap_or([1, 1]),
                    pads: pads
                        .try_into()
                        .map_err(|_| fail(&label, "pads must have 4 values".into()))?,
                })
            }
            "ConvTranspose" => {
                check_plain()?;
                if attr("output_shape").is_some() {
                    return Err(fail(
                        &label,
                        "output_shape is not supported; use pads".into(),
                    ));
                }
                let weights = weights(1)?;
                Op::ConvTranspose(ConvTranspose {
                    weights,
                    bias: constant_f32(2)?,
                    stride: ints("strides", &[1, 1]).try_into().unwrap_or([1, 1]),
                    pads: ints("pads", &[0, 0, 0, 0])
                        .try_into()
                        .map_err(|_| fail(&label, "pads must have 4 values".into()))?,
                    output_padding: ints("output_padding", &[0, 0]).try_into().unwrap_or([0, 0]),
                })
            }
            "BatchNormalization" => {
                let get =
                    |i| constant_f32(i)?.ok_or_else(|| fail(&label, format!("input {i} missing")));
                Op::BatchNorm(BatchNorm {
                    gamma: get(1)?,
                    beta: get(2)?,
                    mean: get(3)?,
                    var: get(4)?,
                    epsilon: attr("epsilon").map_or(1e-5, |a| a.f),
                })
            }
            "Relu" => Op::Relu,
            "MaxPool" => {
                if node.output.len() > 1 || attr("ceil_mode").is_some_and(|a| a.i != 0) {
                    return Err(fail(
                        &label,
                        "MaxPool with indices or ceil_mode is not supported".into(),
                    ));
                }
                Op::MaxPool {
                    kernel: ints("kernel_shape", &[])
                        .try_into()
                        .map_err(|_| fail(&label, "kernel_shape must have 2 values".into()))?,
                    stride: ints("strides", &[1, 1]).try_into().unwrap_or([1, 1]),
                    pads: ints("pads", &[0, 0, 0, 0])
                        .try_into()
                        .map_err(|_| fail(&label, "pads must have 4 values".into()))?,
                }
            }
            "Add" => Op::Add,
            "Concat" => {
                if attr("axis").map_or(0, |a| a.i) != 1 {
                    return Err(fail(
                        &label,
                        "only channel concatenation (axis 1) is supported".into(),
                    ));
                }
                Op::Concat
            }
            "Resize" | "Upsample" => {
                let scales_input = if node.op_type == "Upsample" { 1 } else { 2 };
                let scales = constant_f32(scales_input)?.unwrap_or_default();
                let [1.0, 1.0, sh, sw] = scales[..] else {
                    return Err(fail(
                        &label,
                        format!("scales {scales:?}; only constant scales are supported"),
                    ));
                };
                if sh != sw || sh.fract() != 0.0 || sh < 1.0 {
                    return Err(fail(
                        &label,
                        format!("scales {scales:?}; expected the same integer factor"),
                    ));
                }
                let text = |key: &str, default: &str| {
                    attr(key).map_or(default.to_string(), |a| {
                        String::from_utf8_lossy(&a.s).into_owned()
                    })
                };
                let mode = match (
                    text("mode", "nearest").as_str(),
                    text("coordinate_transformation_mode", "half_pixel").as_str(),
                ) {
                    ("nearest", _) => ResizeMode::Nearest,
                    ("linear", "align_corners") => ResizeMode::LinearAlignCorners,
                    ("linear", "half_pixel" | "pytorch_half_pixel") => ResizeMode::LinearHalfPixel,
                    (m, t) => {
                        return Err(fail(
                            &label,
                            format!("resize mode {m} with {t} coordinates is not supported"),
                        ));
                    }
                };
                Op::Resize {
                    scale: sh as usize,
                    mode,
                }
            }
            "Pad" => {
                let pads = node
                    .input
                    .get(1)
                    .and_then(|n| consts.get(n))
                    .and_then(tensor_values_i64)
                    .ok_or_else(|| fail(&label, "pads must be a constant".into()))?;
                let [0, 0, 0, 0, 0, 0, bottom, right] = pads[..] else {
                    return Err(fail(
                        &label,
                        format!("pads {pads:?}; only bottom/right zero padding is supported"),
                    ));
                };
                Op::Pad {
                    bottom: bottom as usize,
                    right: right as usize,
                }
            }
            "Slice" => {
                let get = |i: usize| {
                    node.input
                        .get(i)
                        .and_then(|n| consts.get(n))
                        .and_then(tensor_values_i64)
                };
                let (starts, ends, axes) = (get(1), get(2), get(3));
                match (starts.as_deref(), ends.as_deref(), axes.as_deref()) {
                    (Some([0, 0]), Some(&[height, width]), Some([2, 3])) => Op::Crop {
                        height: height as usize,
                        width: width as usize,
                    },
                    _ => {
                        return Err(fail(
                            &label,
                            "only a top-left crop of height and width is supported".into(),
                        ));
                    }
                }
            }
            other => {
                return Err(fail(&label, format!("operator {other} is not supported")));
            }
        };
        let inputs = match op {
            Op::Add => vec![value(0)?, value(1)?],
            Op::Concat => (0..node.input.len()).map(value).collect::<Result<_>>()?,
            _ => vec![value(0)?],
        };
        let v = graph.add(unique, op, &inputs)?;
        values.insert(node.output[0].clone(), v);
    }
    let [output] = &g.output[..] else {
        return Err(Error::Onnx {
            what: "the model".into(),
            message: format!("has {} outputs; expected one", g.output.len()),
        });
    };
    let v = values
        .get(&output.name)
        .copied()
        .ok_or_else(|| Error::Onnx {
            what: format!("output {}", output.name),
            message: "is not computed by any node".into(),
        })?;
    graph.set_output(v)?;
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::small_graph;

    fn info(g: &Graph) -> ModelInfo {
        let [_, h, w] = g.input_shape();
        let classes = g.shape(g.output())[0];
        ModelInfo {
            class_names: (0..classes).map(|i| format!("c{i}")).collect(),
            palette: vec![[9, 9, 9]; classes],
            void: Some(255),
            input_size: firmware::Size::new(w as u32, h as u32),
            mean: [0.4; 3],
            std: [0.2; 3],
            architecture: "small".into(),
            val_miou: 0.5,
            precision: "float32".into(),
        }
    }

    #[test]
    fn graphs_round_trip_through_onnx() {
        let g = small_graph();
        let model = to_model(&g, &info(&g));
        let back = from_model(&ModelProto::decode(&model.encode_to_vec()[..]).unwrap()).unwrap();
        assert_eq!(back.nodes().len(), g.nodes().len());
        for (a, b) in back.nodes().iter().zip(g.nodes()) {
            assert_eq!((&a.op, &a.inputs), (&b.op, &b.inputs), "{}", a.name);
        }
        assert_eq!(back.output(), g.output());
    }

    /// What PyTorch's exporter writes differs: unnamed nodes, weights as
    /// `float_data`, scales in `Constant` nodes, `Identity` pass-throughs.
    #[test]
    fn reads_exporter_variations_and_names_unsupported_nodes() {
        let g = small_graph();
        let mut model = to_model(&g, &info(&g));
        let graph = model.graph.as_mut().unwrap();
        for t in &mut graph.initializer {
            if t.data_type == DataType::Float as i32 {
                t.float_data = tensor_values_f32(t).unwrap();
                t.raw_data.clear();
            }
        }
        // Move the first initializer into a Constant node, rename nodes away.
        let first = graph.initializer.remove(0);
        graph.node.insert(
            0,
            NodeProto {
                op_type: "Constant".into(),
                output: vec![first.name.clone()],
                attribute: vec![AttributeProto {
                    name: "value".into(),
                    r#type: AttributeType::Tensor as i32,
                    t: Some(first),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let relu = graph.node.iter().position(|n| n.op_type == "Relu").unwrap();
        let out = graph.node[relu].output[0].clone();
        graph.node[relu].output[0] = format!("{out}_pre");
        graph.node.insert(
            relu + 1,
            NodeProto {
                op_type: "Identity".into(),
                input: vec![format!("{out}_pre")],
                output: vec![out],
                ..Default::default()
            },
        );
        graph.node.iter_mut().for_each(|n| n.name.clear());
        let back = from_model(&model).unwrap();
        assert_eq!(back.nodes().len(), g.nodes().len());
        for (a, b) in back.nodes().iter().zip(g.nodes()) {
            assert_eq!((&a.op, &a.inputs), (&b.op, &b.inputs));
        }

        let graph = model.graph.as_mut().unwrap();
        graph.node[3].op_type = "Softmax".into();
        let err = from_model(&model).unwrap_err().to_string();
        assert!(
            err.contains("Softmax") && err.contains("not supported"),
            "{err}"
        );
    }
}
