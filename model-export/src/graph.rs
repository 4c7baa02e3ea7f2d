//! A small layer graph: what a segmentation CNN is made of, with its weights as
//! plain arrays. `host` fills it from a trained Burn model, [`crate::onnx`] reads
//! it from and writes it to ONNX, and [`crate::quant`] quantises it.
//!
//! Values are numbered: [`Graph::INPUT`] is the image, and node `i` produces
//! value `i + 1`. Nodes are kept in topological order by construction: a node
//! can only use values that exist when it is added. Shapes are per image
//! (`[channels, height, width]`; the batch is 1) and are checked as nodes are
//! added, so a graph that builds is a graph whose shapes agree.

use crate::error::{Error, Result};

/// A value in a [`Graph`]: the input or the output of a node.
pub type Value = usize;

/// Weights of a convolution: `shape` is `[out, in, kh, kw]` for [`Conv`] and
/// `[in, out, kh, kw]` for [`ConvTranspose`], as in ONNX; `data` is row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    /// Dimensions.
    pub shape: [usize; 4],
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Weights {
    /// Weights of `shape` from `data`, which must hold exactly the right number of values.
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Result<Weights> {
        let n: usize = shape.iter().product();
        if n != data.len() || n == 0 {
            return Err(Error::Graph(format!(
                "weights of shape {shape:?} need {n} values, got {}",
                data.len()
            )));
        }
        Ok(Weights { shape, data })
    }
}

/// A 2-D convolution (groups = 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// `[out, in, kh, kw]`.
    pub weights: Weights,
    /// One per output channel.
    pub bias: Option<Vec<f32>>,
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub pads: [usize; 4],
}

/// A 2-D transposed convolution (groups = 1, dilation 1).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvTranspose {
    /// `[in, out, kh, kw]`.
    pub weights: Weights,
    /// One per output channel.
    pub bias: Option<Vec<f32>>,
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Padding removed from the full output: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Extra rows and columns added at the bottom and right.
    pub output_padding: [usize; 2],
}

/// Inference-mode batch normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// Scale.
    pub gamma: Vec<f32>,
    /// Shift.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
    /// Added to the variance.
    pub epsilon: f32,
}

impl BatchNorm {
    /// Per-channel `(scale, shift)` such that the layer computes `x * scale + shift`.
    pub fn affine(&self) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = self
            .gamma
            .iter()
            .zip(&self.var)
            .map(|(g, v)| g / (v + self.epsilon).sqrt())
            .collect();
        let shift = self
            .beta
            .iter()
            .zip(&self.mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        (scale, shift)
    }
}

/// How [`Op::Resize`] interpolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear, corners aligned (`align_corners=True` in PyTorch, Burn's default).
    LinearAlignCorners,
    /// Bilinear, half-pixel centres (`align_corners=False` in PyTorch).
    LinearHalfPixel,
}

/// What a node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Convolution.
    Conv(Conv),
    /// Transposed convolution.
    ConvTranspose(ConvTranspose),
    /// Batch normalisation.
    BatchNorm(BatchNorm),
    /// `max(x, 0)`.
    Relu,
    /// Max pooling; padded cells never win.
    MaxPool {
        /// Kernel height and width.
        kernel: [usize; 2],
        /// Vertical and horizontal stride.
        stride: [usize; 2],
        /// Padding: top, left, bottom, right.
        pads: [usize; 4],
    },
    /// Element-wise sum of two values of the same shape.
    Add,
    /// Concatenation of two or more values along the channels.
    Concat,
    /// Upsampling by an integer factor.
    Resize {
        /// Factor for height and width.
        scale: usize,
        /// Interpolation.
        mode: ResizeMode,
    },
    /// Zero padding at the bottom and right.
    Pad {
        /// Rows added at the bottom.
        bottom: usize,
        /// Columns added at the right.
        right: usize,
    },
    /// Keeps the top-left `height` x `width` window.
    Crop {
        /// Rows kept.
        height: usize,
        /// Columns kept.
        width: usize,
    },
}

impl Op {
    /// The ONNX operator this op becomes.
    pub fn onnx_name(&self) -> &'static str {
        match self {
            Op::Conv(_) => "Conv",
            Op::ConvTranspose(_) => "ConvTranspose",
            Op::BatchNorm(_) => "BatchNormalization",
            Op::Relu => "Relu",
            Op::MaxPool { .. } => "MaxPool",
            Op::Add => "Add",
            Op::Concat => "Concat",
            Op::Resize { .. } => "Resize",
            Op::Pad { .. } => "Pad",
            Op::Crop { .. } => "Slice",
        }
    }
}

/// One operation and the values it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique name, used for the ONNX node and its output value.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Values it reads, in order.
    pub inputs: Vec<Value>,
}

/// A network from one image to one tensor of class logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    nodes: Vec<Node>,
    shapes: Vec<[usize; 3]>,
    output: Value,
}

fn out_len(len: usize, pad: usize, kernel: usize, stride: usize, what: &str) -> Result<usize> {
    let padded = len + pad;
    if padded < kernel || stride == 0 {
        return Err(Error::Graph(format!(
            "{what}: a kernel of {kernel} at stride {stride} does not fit {padded} cells"
        )));
    }
    Ok((padded - kernel) / stride + 1)
}

impl Graph {
    /// The image, the first value.
    pub const INPUT: Value = 0;

    /// An empty graph whose input is one image of `[channels, height, width]`.
    pub fn new(input: [usize; 3]) -> Graph {
        Graph {
            nodes: Vec::new(),
            shapes: vec![input],
            output: Graph::INPUT,
        }
    }

    /// The input shape, `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.shapes[0]
    }

    /// The nodes, in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The nodes, for passes that change weights in place (not the structure).
    pub(crate) fn nodes_mut(&mut self) -> &mut [Node] {
        &mut self.nodes
    }

    /// The shape of `value`.
    pub fn shape(&self, value: Value) -> [usize; 3] {
        self.shapes[value]
    }

    /// The value the graph returns (by default the last one added).
    pub fn output(&self) -> Value {
        self.output
    }

    /// Makes `value` the graph's output.
    pub fn set_output(&mut self, value: Value) -> Result<()> {
        if value >= self.shapes.len() {
            return Err(Error::Graph(format!("no value {value} in the graph")));
        }
        self.output = value;
        Ok(())
    }

    /// The node producing `value`, or `None` for the input.
    pub fn producer(&self, value: Value) -> Option<&Node> {
        value.checked_sub(1).map(|i| &self.nodes[i])
    }

    /// The value node `i` produces.
    pub fn value_of(node: usize) -> Value {
        node + 1
    }

    /// How many nodes read `value` (the graph output counts as a reader).
    pub fn readers(&self, value: Value) -> usize {
        let nodes = self
            .nodes
            .iter()
            .flat_map(|n| &n.inputs)
            .filter(|&&v| v == value)
            .count();
        nodes + usize::from(self.output == value)
    }

    /// Appends a node computing `op` on `inputs` and returns its value.
    pub fn add(&mut self, name: impl Into<String>, op: Op, inputs: &[Value]) -> Result<Value> {
        let name = name.into();
        let fail = |what: String| Error::Graph(format!("node {name}: {what}"));
        if let Some(&v) = inputs.iter().find(|&&v| v >= self.shapes.len()) {
            return Err(fail(format!("reads value {v}, which does not exist yet")));
        }
        if self.nodes.iter().any(|n| n.name == name) || name.is_empty() {
            return Err(fail("the name is empty or already used".into()));
        }
        let arity = match op {
            Op::Add => 2,
            Op::Concat => inputs.len().max(2),
            _ => 1,
        };
        if inputs.len() != arity {
            return Err(fail(format!(
                "{} takes {arity} inputs, got {}",
                op.onnx_name(),
                inputs.len()
            )));
        }
        let [c, h, w] = self.shapes[inputs[0]];
        let shape = match &op {
            Op::Conv(conv) => {
                let [o, i, kh, kw] = conv.weights.shape;
                if i != c {
                    return Err(fail(format!("weights expect {i} channels, input has {c}")));
                }
                check_bias(&conv.bias, o).map_err(fail)?;
                let [t, l, b, r] = conv.pads;
                [
                    o,
                    out_len(h, t + b, kh, conv.stride[0], &name)?,
                    out_len(w, l + r, kw, conv.stride[1], &name)?,
                ]
            }
            Op::ConvTranspose(conv) => {
                let [i, o, kh, kw] = conv.weights.shape;
                if i != c {
                    return Err(fail(format!("weights expect {i} channels, input has {c}")));
                }
                check_bias(&conv.bias, o).map_err(fail)?;
                let [t, l, b, r] = conv.pads;
                let full = |n: usize, s: usize, k: usize, p: usize| (n - 1) * s + k + p;
                let oh = full(h, conv.stride[0], kh, conv.output_padding[0]);
                let ow = full(w, conv.stride[1], kw, conv.output_padding[1]);
                if oh <= t + b || ow <= l + r {
                    return Err(fail("the padding removes the whole output".into()));
                }
                [o, oh - t - b, ow - l - r]
            }
            Op::BatchNorm(bn) => {
                let lens = [bn.gamma.len(), bn.beta.len(), bn.mean.len(), bn.var.len()];
                if lens.iter().any(|&n| n != c) {
                    return Err(fail(format!(
                        "parameters of lengths {lens:?} for {c} channels"
                    )));
                }
                [c, h, w]
            }
            Op::Relu => [c, h, w],
            Op::MaxPool {
                kernel,
                stride,
                pads: [t, l, b, r],
            } => [
                c,
                out_len(h, t + b, kernel[0], stride[0], &name)?,
                out_len(w, l + r, kernel[1], stride[1], &name)?,
            ],
            Op::Add => {
                if self.shapes[inputs[1]] != [c, h, w] {
                    return Err(fail(format!(
                        "adds {:?} to {:?}",
                        self.shapes[inputs[1]],
                        [c, h, w]
                    )));
                }
                [c, h, w]
            }
            Op::Concat => {
                let mut channels = 0;
                for &v in inputs {
                    let [ci, hi, wi] = self.shapes[v];
                    if (hi, wi) != (h, w) {
                        return Err(fail(format!("concatenates {hi}x{wi} with {h}x{w}")));
                    }
                    channels += ci;
                }
                [channels, h, w]
            }
            Op::Resize { scale, .. } => [c, h * scale, w * scale],
            Op::Pad { bottom, right } => [c, h + bottom, w + right],
            Op::Crop { height, width } => {
                if *height > h || *width > w || *height == 0 || *width == 0 {
                    return Err(fail(format!("cannot crop {h}x{w} to {height}x{width}")));
                }
                [c, *height, *width]
            }
        };
        self.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
        });
        self.shapes.push(shape);
        self.output = self.shapes.len() - 1;
        Ok(self.output)
    }

    /// Folds every batch norm that directly follows a convolution (or transposed
    /// convolution) read by nothing else into that convolution's weights and
    /// bias, and returns how many were folded. The result computes the same
    /// function up to rounding.
    pub fn fold_batchnorm(&mut self) -> usize {
        let mut folded = 0;
        let mut i = 0;
        while i < self.nodes.len() {
            let Op::BatchNorm(bn) = &self.nodes[i].op else {
                i += 1;
                continue;
            };
            let source = self.nodes[i].inputs[0];
            let foldable = self.readers(source) == 1
                && self
                    .producer(source)
                    .is_some_and(|p| matches!(p.op, Op::Conv(_) | Op::ConvTranspose(_)));
            if !foldable {
                i += 1;
                continue;
            }
            let (scale, shift) = bn.affine();
            match &mut self.nodes[source - 1].op {
                Op::Conv(conv) => {
                    let per_out: usize = conv.weights.shape[1..].iter().product();
                    for (o, chunk) in conv.weights.data.chunks_mut(per_out).enumerate() {
                        chunk.iter_mut().for_each(|w| *w *= scale[o]);
                    }
                    fold_bias(&mut conv.bias, &scale, &shift);
                }
                Op::ConvTranspose(conv) => {
                    let [_, o, kh, kw] = conv.weights.shape;
                    for (j, w) in conv.weights.data.iter_mut().enumerate() {
                        *w *= scale[(j / (kh * kw)) % o];
                    }
                    fold_bias(&mut conv.bias, &scale, &shift);
                }
                _ => unreachable!("checked above"),
            }
            self.remove_passthrough(i);
            folded += 1;
        }
        folded
    }

    /// Removes node `i`, whose output equals its first input, rewiring its readers.
    fn remove_passthrough(&mut self, i: usize) {
        let (removed, replacement) = (Graph::value_of(i), self.nodes[i].inputs[0]);
        self.nodes.remove(i);
        self.shapes.remove(removed);
        let renumber = |v: Value| match v.cmp(&removed) {
            std::cmp::Ordering::Less => v,
            std::cmp::Ordering::Equal => replacement,
            std::cmp::Ordering::Greater => v - 1,
        };
        for node in &mut self.nodes {
            node.inputs.iter_mut().for_each(|v| *v = renumber(*v));
        }
        self.output = renumber(self.output);
    }

    /// Counts nodes by ONNX operator name, sorted by name.
    pub fn op_counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for node in &self.nodes {
            *counts.entry(node.op.onnx_name()).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }

    /// Multiply-accumulates of one inference, counting convolutions only.
    pub fn macs(&self) -> u64 {
        let area = |v: Value| {
            let [_, h, w] = self.shapes[v];
            (h * w) as u64
        };
        let per_node = |(i, node): (usize, &Node)| match &node.op {
            // Each output cell of a convolution takes every weight of its channel once.
            Op::Conv(c) => c.weights.data.len() as u64 * area(Graph::value_of(i)),
            // Each input cell of a transposed convolution scatters every weight once.
            Op::ConvTranspose(c) => c.weights.data.len() as u64 * area(node.inputs[0]),
            _ => 0,
        };
        self.nodes.iter().enumerate().map(per_node).sum::<u64>()
    }
}

fn check_bias(bias: &Option<Vec<f32>>, out: usize) -> std::result::Result<(), String> {
    match bias {
        Some(b) if b.len() != out => Err(format!("{} biases for {out} outputs", b.len())),
        _ => Ok(()),
    }
}

fn fold_bias(bias: &mut Option<Vec<f32>>, scale: &[f32], shift: &[f32]) {
    let old = bias.take().unwrap_or_else(|| vec![0.0; scale.len()]);
    *bias = Some(
        old.iter()
            .zip(scale)
            .zip(shift)
            .map(|((b, s), t)| b * s + t)
            .collect(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(o: usize, i: usize, k: usize, stride: usize) -> Op {
        Op::Conv(Conv {
            weights: Weights::new(
                [o, i, k, k],
                (0..o * i * k * k).map(|x| x as f32 * 0.01).collect(),
            )
            .unwrap(),
            bias: None,
            stride: [stride, stride],
            pads: [k / 2; 4],
        })
    }

    fn bn(c: usize) -> Op {
        Op::BatchNorm(BatchNorm {
            gamma: vec![2.0; c],
            beta: vec![0.5; c],
            mean: vec![0.1; c],
            var: vec![3.0; c],
            epsilon: 1e-5,
        })
    }

    #[test]
    fn shapes_follow_the_ops() {
        let mut g = Graph::new([3, 30, 40]);
        let a = g.add("stem", conv(8, 3, 3, 2), &[Graph::INPUT]).unwrap();
        assert_eq!(g.shape(a), [8, 15, 20]);
        let p = g
            .add(
                "pool",
                Op::MaxPool {
                    kernel: [3, 3],
                    stride: [2, 2],
                    pads: [1; 4],
                },
                &[a],
            )
            .unwrap();
        assert_eq!(g.shape(p), [8, 8, 10]);
        let up = g
            .add(
                "up",
                Op::ConvTranspose(ConvTranspose {
                    weights: Weights::new([8, 4, 3, 3], vec![0.0; 288]).unwrap(),
                    bias: Some(vec![0.0; 4]),
                    stride: [2, 2],
                    pads: [1; 4],
                    output_padding: [1, 1],
                }),
                &[p],
            )
            .unwrap();
        assert_eq!(g.shape(up), [4, 16, 20]);
        let crop = g
            .add(
                "crop",
                Op::Crop {
                    height: 15,
                    width: 20,
                },
                &[up],
            )
            .unwrap();
        let cat = g.add("cat", Op::Concat, &[a, crop]).unwrap();
        assert_eq!(g.shape(cat), [12, 15, 20]);
        assert_eq!(g.output(), cat);
        assert_eq!(g.macs(), (8 * 3 * 9 * 15 * 20 + 8 * 4 * 9 * 8 * 10) as u64);
    }

    #[test]
    fn mismatches_are_named() {
        let mut g = Graph::new([3, 8, 8]);
        let err = g.add("c1", conv(4, 5, 3, 1), &[Graph::INPUT]).unwrap_err();
        assert!(
            err.to_string().contains("c1") && err.to_string().contains("5 channels"),
            "{err}"
        );
        let a = g.add("a", conv(4, 3, 3, 2), &[Graph::INPUT]).unwrap();
        let err = g.add("sum", Op::Add, &[a, Graph::INPUT]).unwrap_err();
        assert!(err.to_string().contains("sum"), "{err}");
        assert!(g.add("a", Op::Relu, &[a]).is_err(), "duplicate name");
        assert!(g.add("r", Op::Relu, &[9]).is_err(), "missing value");
    }

    #[test]
    fn batchnorm_folds_into_the_convolution() {
        let mut g = Graph::new([3, 8, 8]);
        let a = g.add("conv", conv(4, 3, 3, 1), &[Graph::INPUT]).unwrap();
        let b = g.add("bn", bn(4), &[a]).unwrap();
        let r = g.add("relu", Op::Relu, &[b]).unwrap();
        // A batch norm after a value read twice stays.
        let c = g.add("bn2", bn(4), &[r]).unwrap();
        let _ = g.add("sum", Op::Add, &[c, r]).unwrap();
        assert_eq!(g.fold_batchnorm(), 1);
        assert_eq!(
            g.op_counts(),
            vec![
                ("Add", 1),
                ("BatchNormalization", 1),
                ("Conv", 1),
                ("Relu", 1)
            ]
        );
        let Op::Conv(folded) = &g.nodes()[0].op else {
            panic!("conv first")
        };
        let s = 2.0 / (3.0f32 + 1e-5).sqrt();
        assert!((folded.weights.data[1] - 0.01 * s).abs() < 1e-7);
        assert!((folded.bias.as_ref().unwrap()[0] - (0.5 - 0.1 * s)).abs() < 1e-6);
        // Readers were renumbered: relu reads the conv, the sum reads bn2 and relu.
        assert_eq!(g.nodes()[1].inputs, vec![1]);
        assert_eq!(g.nodes()[3].inputs, vec![3, 2]);
        assert_eq!(g.output(), 4);
    }
}
