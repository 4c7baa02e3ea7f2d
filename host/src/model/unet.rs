//! U-Net: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for
//! Biomedical Image Segmentation", MICCAI 2015 (arXiv 1505.04597).
//!
//! Differences from the paper: "same" padding so the output has the input's size
//! (the paper crops valid convolutions), batch norm after every convolution, and a
//! configurable base width (16 by default for edge boards; 64 gives the original
//! 64..1024 network) and depth.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::interpolate::{Interpolate2d, Interpolate2dConfig, InterpolateMode};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;

use model_export::{Graph, Op, graph::Value};

use super::blocks::{ConvBnRelu, crop, pad_to_multiple, up2};
use crate::model::onnx::{self, GraphResult};

/// U-Net hyper-parameters; saved beside the weights so the model can be rebuilt.
#[derive(Config, Debug, PartialEq)]
pub struct UNetConfig {
    /// Output classes.
    #[config(default = 11)]
    pub num_classes: usize,
    /// Channels of the first level; level `i` has `base_width * 2^i`.
    #[config(default = 16)]
    pub base_width: usize,
    /// Number of 2x2 poolings (and of upsampling steps).
    #[config(default = 4)]
    pub depth: usize,
    /// Upsample with bilinear interpolation and a 1x1 convolution instead of a
    /// 2x2 transposed convolution.
    #[config(default = false)]
    pub bilinear: bool,
}

/// Two 3x3 convolutions with batch norm and ReLU.
#[derive(Module, Debug)]
pub struct DoubleConv {
    first: ConvBnRelu,
    second: ConvBnRelu,
}

impl DoubleConv {
    fn new(c_in: usize, c_out: usize, device: &Device) -> DoubleConv {
        DoubleConv {
            first: ConvBnRelu::new(c_in, c_out, 3, 1, device),
            second: ConvBnRelu::new(c_out, c_out, 3, 1, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.second.forward(self.first.forward(x))
    }

    fn export(&self, g: &mut Graph, name: &str, x: Value) -> GraphResult<Value> {
        let x = self.first.export(g, &format!("{name}.0"), x)?;
        self.second.export(g, &format!("{name}.1"), x)
    }
}

/// One decoder level: upsample, concatenate the skip, two convolutions.
#[derive(Module, Debug)]
pub struct UpLevel {
    up: Option<burn::nn::conv::ConvTranspose2d>,
    resize: Option<Interpolate2d>,
    reduce: Option<Conv2d>,
    conv: DoubleConv,
}

impl UpLevel {
    fn forward(&self, x: Tensor<4>, skip: Tensor<4>) -> Tensor<4> {
        let x = match (&self.up, &self.resize, &self.reduce) {
            (Some(up), _, _) => up.forward(x),
            (None, Some(resize), Some(reduce)) => reduce.forward(resize.forward(x)),
            _ => unreachable!("an up level has a transposed convolution or a resize"),
        };
        self.conv.forward(Tensor::cat(vec![skip, x], 1))
    }

    fn export(&self, g: &mut Graph, name: &str, x: Value, skip: Value) -> GraphResult<Value> {
        let x = match (&self.up, &self.resize, &self.reduce) {
            (Some(up), _, _) => onnx::conv_transpose(g, &format!("{name}.up"), up, x)?,
            (None, Some(resize), Some(reduce)) => {
                let x = onnx::interpolate(g, &format!("{name}.resize"), resize, x)?;
                onnx::conv(g, &format!("{name}.reduce"), reduce, x)?
            }
            _ => unreachable!("an up level has a transposed convolution or a resize"),
        };
        let x = g.add(format!("{name}.cat"), Op::Concat, &[skip, x])?;
        self.conv.export(g, &format!("{name}.conv"), x)
    }
}

/// The U-Net.
#[derive(Module, Debug)]
pub struct UNet {
    down: Vec<DoubleConv>,
    pool: MaxPool2d,
    up: Vec<UpLevel>,
    head: Conv2d,
}

impl UNetConfig {
    /// Builds the network with fresh weights on `device`.
    pub fn init(&self, device: &Device) -> UNet {
        let width = |level: usize| self.base_width << level;
        let down = (0..=self.depth)
            .map(|i| DoubleConv::new(if i == 0 { 3 } else { width(i - 1) }, width(i), device))
            .collect();
        let up = (0..self.depth)
            .rev()
            .map(|i| {
                let (c_in, c_out) = (width(i + 1), width(i));
                let (up, resize, reduce) = if self.bilinear {
                    let resize = Interpolate2dConfig::new()
                        .with_scale_factor(Some([2.0, 2.0]))
                        .with_mode(InterpolateMode::Linear)
                        .init();
                    (
                        None,
                        Some(resize),
                        Some(Conv2dConfig::new([c_in, c_out], [1, 1]).init(device)),
                    )
                } else {
                    (Some(up2(c_in, c_out, 2, true, device)), None, None)
                };
                UpLevel {
                    up,
                    resize,
                    reduce,
                    conv: DoubleConv::new(2 * c_out, c_out, device),
                }
            })
            .collect();
        UNet {
            down,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            up,
            head: Conv2dConfig::new([width(0), self.num_classes], [1, 1]).init(device),
        }
    }
}

impl UNet {
    /// Inputs whose sides are multiples of this need no padding.
    pub fn stride(&self) -> usize {
        1 << (self.down.len() - 1)
    }

    /// Class logits for a batch of normalised images.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, height, width]`, any height and width (padded
    ///   internally to a multiple of [`UNet::stride`], the output cropped back)
    /// - returns `[batch, num_classes, height, width]`
    pub fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        let (mut x, size) = pad_to_multiple(images, self.stride());
        let mut skips = Vec::with_capacity(self.down.len());
        for (i, level) in self.down.iter().enumerate() {
            if i > 0 {
                x = self.pool.forward(x); // [b, c, h / 2^i, w / 2^i]
            }
            x = level.forward(x);
            skips.push(x.clone());
        }
        skips.pop(); // the bottleneck is `x` itself
        for level in &self.up {
            x = level.forward(x, skips.pop().expect("one skip per level"));
        }
        crop(self.head.forward(x), size)
    }

    /// Adds [`UNet::forward`] to `g`, reading the graph's input.
    pub fn export(&self, g: &mut Graph) -> GraphResult<Value> {
        let (mut x, size) = onnx::pad_input(g, self.stride())?;
        let mut skips = Vec::with_capacity(self.down.len());
        for (i, level) in self.down.iter().enumerate() {
            if i > 0 {
                x = onnx::max_pool(g, &format!("down{i}.pool"), &self.pool, x)?;
            }
            x = level.export(g, &format!("down{i}"), x)?;
            skips.push(x);
        }
        skips.pop();
        for (i, level) in self.up.iter().enumerate() {
            let skip = skips.pop().expect("one skip per level");
            x = level.export(g, &format!("up{i}"), x, skip)?;
        }
        let x = onnx::conv(g, "head", &self.head, x)?;
        onnx::crop_output(g, x, size)
    }
}
