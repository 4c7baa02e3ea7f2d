//! Building blocks shared by the models.

use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use model_export::{Graph, graph::Value};

use crate::model::onnx::{self, GraphResult};

/// Convolution without bias (the batch norm that follows has one), then batch norm and ReLU.
#[derive(Module, Debug)]
pub struct ConvBnRelu {
    /// The convolution.
    pub conv: Conv2d,
    /// Its batch norm.
    pub bn: BatchNorm,
}

impl ConvBnRelu {
    /// A `k` x `k` convolution from `c_in` to `c_out` channels with "same" padding at stride 1.
    pub fn new(c_in: usize, c_out: usize, k: usize, stride: usize, device: &Device) -> ConvBnRelu {
        ConvBnRelu {
            conv: Conv2dConfig::new([c_in, c_out], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    /// # Shapes
    /// `[b, c_in, h, w]` to `[b, c_out, h / stride, w / stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.bn.forward(self.conv.forward(x)))
    }

    /// The same without the ReLU, for residual branches.
    pub fn forward_linear(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }

    /// Adds [`ConvBnRelu::forward`] to `g`.
    pub fn export(&self, g: &mut Graph, name: &str, x: Value) -> GraphResult<Value> {
        let x = self.export_linear(g, name, x)?;
        onnx::relu(g, &format!("{name}.relu"), x)
    }

    /// Adds [`ConvBnRelu::forward_linear`] to `g`.
    pub fn export_linear(&self, g: &mut Graph, name: &str, x: Value) -> GraphResult<Value> {
        let x = onnx::conv(g, &format!("{name}.conv"), &self.conv, x)?;
        onnx::batch_norm(g, &format!("{name}.bn"), &self.bn, x)
    }
}

/// Transposed convolution, batch norm and ReLU.
#[derive(Module, Debug)]
pub struct UpBnRelu {
    /// The transposed convolution.
    pub conv: ConvTranspose2d,
    /// Its batch norm.
    pub bn: BatchNorm,
}

impl UpBnRelu {
    /// Doubles the resolution with a `k` x `k` transposed convolution (`k` = 2 or 3).
    pub fn new(c_in: usize, c_out: usize, k: usize, device: &Device) -> UpBnRelu {
        UpBnRelu {
            conv: up2(c_in, c_out, k, false, device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    /// # Shapes
    /// `[b, c_in, h, w]` to `[b, c_out, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.bn.forward(self.conv.forward(x)))
    }

    /// Adds [`UpBnRelu::forward`] to `g`.
    pub fn export(&self, g: &mut Graph, name: &str, x: Value) -> GraphResult<Value> {
        let x = onnx::conv_transpose(g, &format!("{name}.conv"), &self.conv, x)?;
        let x = onnx::batch_norm(g, &format!("{name}.bn"), &self.bn, x)?;
        onnx::relu(g, &format!("{name}.relu"), x)
    }
}

/// A transposed convolution that exactly doubles height and width: 2x2 stride 2, or
/// 3x3 stride 2 with padding 1 and output padding 1 (as in LinkNet).
pub fn up2(c_in: usize, c_out: usize, k: usize, bias: bool, device: &Device) -> ConvTranspose2d {
    let (pad, out_pad) = if k == 3 { (1, 1) } else { (0, 0) };
    ConvTranspose2dConfig::new([c_in, c_out], [k, k])
        .with_stride([2, 2])
        .with_padding([pad, pad])
        .with_padding_out([out_pad, out_pad])
        .with_bias(bias)
        .init(device)
}

/// Pads `x` at the bottom and right so both sides are multiples of `multiple`,
/// returning the padded tensor and the original height and width.
pub fn pad_to_multiple(x: Tensor<4>, multiple: usize) -> (Tensor<4>, [usize; 2]) {
    let [_, _, h, w] = x.dims();
    let (ph, pw) = (
        h.div_ceil(multiple) * multiple - h,
        w.div_ceil(multiple) * multiple - w,
    );
    if ph == 0 && pw == 0 {
        return (x, [h, w]);
    }
    // Zero is the dataset mean after normalisation.
    (
        x.pad((0, pw, 0, ph), burn::tensor::ops::PadMode::Constant(0.0)),
        [h, w],
    )
}

/// Crops `x` back to `[h, w]` from the top-left corner.
pub fn crop(x: Tensor<4>, [h, w]: [usize; 2]) -> Tensor<4> {
    let [_, _, ph, pw] = x.dims();
    if ph == h && pw == w {
        x
    } else {
        x.slice(s![.., .., 0..h, 0..w])
    }
}
