//! Burn layers as nodes of `model-export`'s layer graph: the helpers each
//! model's `export` method (next to its `forward`) builds its ONNX mirror
//! with, and [`Model::to_graph`].

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::interpolate::{Interpolate2d, InterpolateMode};
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::prelude::*;
use firmware::Size;
use model_export::graph::{self, Graph, Op, ResizeMode, Value, Weights};

use super::Model;

/// Result of the graph-building helpers.
pub type GraphResult<T> = model_export::Result<T>;

/// The values of `t` as f32, in order.
pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("float tensor")
}

fn pads(padding: &PaddingConfig2d, kernel: [usize; 2]) -> [usize; 4] {
    match *padding {
        PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
        PaddingConfig2d::Valid => [0; 4],
        // "Same" padding at stride 1 with an odd kernel, as Burn computes it.
        PaddingConfig2d::Same => {
            let [kh, kw] = kernel;
            [kh / 2, kw / 2, (kh - 1) / 2, (kw - 1) / 2]
        }
    }
}

/// Adds `conv` reading `x`.
pub fn conv(g: &mut Graph, name: &str, conv: &Conv2d, x: Value) -> GraphResult<Value> {
    let w = conv.weight.val();
    let shape = w.dims();
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return Err(model_export::Error::Graph(format!(
            "{name}: grouped or dilated convolutions are not exported"
        )));
    }
    let op = Op::Conv(graph::Conv {
        weights: Weights::new(shape, values(w))?,
        bias: conv.bias.as_ref().map(|b| values(b.val())),
        stride: conv.stride,
        pads: pads(&conv.padding, conv.kernel_size),
    });
    g.add(name, op, &[x])
}

/// Adds `conv` reading `x`.
pub fn conv_transpose(
    g: &mut Graph,
    name: &str,
    conv: &ConvTranspose2d,
    x: Value,
) -> GraphResult<Value> {
    let w = conv.weight.val();
    let shape = w.dims();
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return Err(model_export::Error::Graph(format!(
            "{name}: grouped or dilated transposed convolutions are not exported"
        )));
    }
    let [ph, pw] = conv.padding;
    let op = Op::ConvTranspose(graph::ConvTranspose {
        weights: Weights::new(shape, values(w))?,
        bias: conv.bias.as_ref().map(|b| values(b.val())),
        stride: conv.stride,
        pads: [ph, pw, ph, pw],
        output_padding: conv.padding_out,
    });
    g.add(name, op, &[x])
}

/// Adds `bn` (with its running statistics) reading `x`.
pub fn batch_norm(g: &mut Graph, name: &str, bn: &BatchNorm, x: Value) -> GraphResult<Value> {
    let op = Op::BatchNorm(graph::BatchNorm {
        gamma: values(bn.gamma.val()),
        beta: values(bn.beta.val()),
        mean: values(bn.running_mean.value()),
        var: values(bn.running_var.value()),
        epsilon: bn.epsilon as f32,
    });
    g.add(name, op, &[x])
}

/// Adds a ReLU reading `x`.
pub fn relu(g: &mut Graph, name: &str, x: Value) -> GraphResult<Value> {
    g.add(name, Op::Relu, &[x])
}

/// Adds `pool` reading `x`.
pub fn max_pool(g: &mut Graph, name: &str, pool: &MaxPool2d, x: Value) -> GraphResult<Value> {
    if pool.dilation != [1, 1] || pool.ceil_mode {
        return Err(model_export::Error::Graph(format!(
            "{name}: dilated or ceil-mode pooling is not exported"
        )));
    }
    let op = Op::MaxPool {
        kernel: pool.kernel_size,
        stride: pool.stride,
        pads: pads(&pool.padding, pool.kernel_size),
    };
    g.add(name, op, &[x])
}

/// Adds `resize` (an integer upscaling) reading `x`.
pub fn interpolate(
    g: &mut Graph,
    name: &str,
    resize: &Interpolate2d,
    x: Value,
) -> GraphResult<Value> {
    let scale = match resize.scale_factor {
        Some([a, b]) if a == b && a.fract() == 0.0 && a >= 1.0 => a as usize,
        other => {
            return Err(model_export::Error::Graph(format!(
                "{name}: scale {other:?}; only equal integer factors are exported"
            )));
        }
    };
    let mode = match (&resize.mode, resize.align_corners) {
        (InterpolateMode::Nearest, _) => ResizeMode::Nearest,
        (InterpolateMode::Linear, true) => ResizeMode::LinearAlignCorners,
        (InterpolateMode::Linear, false) => ResizeMode::LinearHalfPixel,
        (other, _) => {
            return Err(model_export::Error::Graph(format!(
                "{name}: {other:?} interpolation is not exported"
            )));
        }
    };
    g.add(name, Op::Resize { scale, mode }, &[x])
}

/// Pads the input at the bottom and right to a multiple of `stride`, as
/// `pad_to_multiple` does in the forward pass; returns the padded value and the
/// original height and width.
pub fn pad_input(g: &mut Graph, stride: usize) -> GraphResult<(Value, [usize; 2])> {
    let [_, h, w] = g.input_shape();
    let (bottom, right) = (
        h.next_multiple_of(stride) - h,
        w.next_multiple_of(stride) - w,
    );
    if bottom == 0 && right == 0 {
        return Ok((Graph::INPUT, [h, w]));
    }
    let v = g.add("pad", Op::Pad { bottom, right }, &[Graph::INPUT])?;
    Ok((v, [h, w]))
}

/// Crops `x` back to `[h, w]` when padding was added.
pub fn crop_output(g: &mut Graph, x: Value, [h, w]: [usize; 2]) -> GraphResult<Value> {
    let [_, xh, xw] = g.shape(x);
    if (xh, xw) == (h, w) {
        return Ok(x);
    }
    g.add(
        "crop",
        Op::Crop {
            height: h,
            width: w,
        },
        &[x],
    )
}

impl Model {
    /// The layer graph of this network for one `size` input, batch norms still
    /// separate (see [`Graph::fold_batchnorm`]).
    pub fn to_graph(&self, size: Size) -> GraphResult<Graph> {
        let mut g = Graph::new([3, size.height as usize, size.width as usize]);
        match self {
            Model::Unet(m) => m.export(&mut g)?,
            Model::Linknet(m) => m.export(&mut g)?,
        };
        Ok(g)
    }
}
