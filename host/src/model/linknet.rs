//! LinkNet: A. Chaurasia, E. Culurciello, "LinkNet: Exploiting Encoder
//! Representations for Efficient Semantic Segmentation", VCIP 2017 (arXiv 1707.03718),
//! with a ResNet-18 or ResNet-34 encoder (He et al. 2016) as in the paper.
//!
//! Differences from the paper: a `width` multiplier scales every channel count
//! for small boards (1.0 is the paper's network), and an optional skip from the
//! stem's half-resolution output into the last decoder stage (`stem_skip`, off
//! by default) for objects only a few pixels wide.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::ConvTranspose2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use model_export::{Graph, Op, graph::Value};

use super::blocks::{ConvBnRelu, UpBnRelu, crop, pad_to_multiple, up2};
use crate::model::onnx::{self, GraphResult};

/// LinkNet hyper-parameters; saved beside the weights so the model can be rebuilt.
#[derive(Config, Debug, PartialEq)]
pub struct LinkNetConfig {
    /// Output classes.
    #[config(default = 11)]
    pub num_classes: usize,
    /// Residual blocks per encoder stage: `[2, 2, 2, 2]` is ResNet-18, `[3, 4, 6, 3]` ResNet-34.
    #[config(default = "[2, 2, 2, 2]")]
    pub blocks: [usize; 4],
    /// Multiplier of every channel count (1.0 = 64..512 as in the paper).
    #[config(default = 1.0)]
    pub width: f32,
    /// Add the stem convolution's output (half resolution), through a 1x1
    /// convolution and batch norm, to the final transposed convolution's output.
    /// The paper's network has no connection finer than a quarter resolution,
    /// which loses poles and fences one to four pixels wide.
    #[config(default = false)]
    pub stem_skip: bool,
}

impl LinkNetConfig {
    /// LinkNet with a ResNet-18 encoder.
    pub fn resnet18() -> LinkNetConfig {
        LinkNetConfig::new()
    }

    /// LinkNet with a ResNet-34 encoder.
    pub fn resnet34() -> LinkNetConfig {
        LinkNetConfig::new().with_blocks([3, 4, 6, 3])
    }

    fn channels(&self, c: usize) -> usize {
        ((c as f32 * self.width).round() as usize).max(4)
    }

    /// Builds the network with fresh weights on `device`.
    pub fn init(&self, device: &Device) -> LinkNet {
        let c = [64, 128, 256, 512].map(|c| self.channels(c));
        let stages = (0..4)
            .map(|i| {
                let c_in = if i == 0 { c[0] } else { c[i - 1] };
                let stride = if i == 0 { 1 } else { 2 };
                (0..self.blocks[i])
                    .map(|j| {
                        BasicBlock::new(
                            if j == 0 { c_in } else { c[i] },
                            c[i],
                            if j == 0 { stride } else { 1 },
                            device,
                        )
                    })
                    .collect()
            })
            .collect();
        let decoders = (0..4)
            .map(|i| DecoderBlock::new(c[i], if i == 0 { c[0] } else { c[i - 1] }, i > 0, device))
            .collect();
        let half = self.channels(32);
        LinkNet {
            stem: ConvBnRelu::new(3, c[0], 7, 2, device),
            pool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            stages,
            decoders,
            stem_skip: self
                .stem_skip
                .then(|| ConvBnRelu::new(c[0], half, 1, 1, device)),
            final_up: UpBnRelu::new(c[0], half, 3, device),
            final_conv: ConvBnRelu::new(half, half, 3, 1, device),
            classifier: up2(half, self.num_classes, 2, true, device),
        }
    }
}

/// ResNet basic block: two 3x3 convolutions and a shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: ConvBnRelu,
    conv2: ConvBnRelu,
    downsample: Option<ConvBnRelu>,
}

impl BasicBlock {
    fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> BasicBlock {
        let downsample =
            (stride != 1 || c_in != c_out).then(|| ConvBnRelu::new(c_in, c_out, 1, stride, device));
        BasicBlock {
            conv1: ConvBnRelu::new(c_in, c_out, 3, stride, device),
            conv2: ConvBnRelu::new(c_out, c_out, 3, 1, device),
            downsample,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward_linear(x.clone()),
            None => x.clone(),
        };
        relu(self.conv2.forward_linear(self.conv1.forward(x)) + shortcut)
    }

    fn export(&self, g: &mut Graph, name: &str, x: Value) -> GraphResult<Value> {
        let shortcut = match &self.downsample {
            Some(d) => d.export_linear(g, &format!("{name}.downsample"), x)?,
            None => x,
        };
        let y = self.conv1.export(g, &format!("{name}.conv1"), x)?;
        let y = self.conv2.export_linear(g, &format!("{name}.conv2"), y)?;
        let sum = g.add(format!("{name}.add"), Op::Add, &[y, shortcut])?;
        onnx::relu(g, &format!("{name}.relu"), sum)
    }
}

/// LinkNet decoder block: 1x1 conv (m to m/4), 3x3 transposed conv /2, 1x1 conv (m/4 to n).
///
/// The block of the first encoder stage, which does not downsample, uses a plain
/// 3x3 convolution instead, as the authors' implementation does.
#[derive(Module, Debug)]
pub struct DecoderBlock {
    reduce: ConvBnRelu,
    up: Option<UpBnRelu>,
    same: Option<ConvBnRelu>,
    expand: ConvBnRelu,
}

impl DecoderBlock {
    fn new(m: usize, n: usize, upsample: bool, device: &Device) -> DecoderBlock {
        let q = (m / 4).max(1);
        DecoderBlock {
            reduce: ConvBnRelu::new(m, q, 1, 1, device),
            up: upsample.then(|| UpBnRelu::new(q, q, 3, device)),
            same: (!upsample).then(|| ConvBnRelu::new(q, q, 3, 1, device)),
            expand: ConvBnRelu::new(q, n, 1, 1, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.reduce.forward(x);
        let x = match (&self.up, &self.same) {
            (Some(up), _) => up.forward(x),
            (None, Some(same)) => same.forward(x),
            (None, None) => unreachable!("a decoder block upsamples or keeps the size"),
        };
        self.expand.forward(x)
    }

    fn export(&self, g: &mut Graph, name: &str, x: Value) -> GraphResult<Value> {
        let x = self.reduce.export(g, &format!("{name}.reduce"), x)?;
        let x = match (&self.up, &self.same) {
            (Some(up), _) => up.export(g, &format!("{name}.up"), x)?,
            (None, Some(same)) => same.export(g, &format!("{name}.same"), x)?,
            (None, None) => unreachable!("a decoder block upsamples or keeps the size"),
        };
        self.expand.export(g, &format!("{name}.expand"), x)
    }
}

/// The LinkNet.
#[derive(Module, Debug)]
pub struct LinkNet {
    stem: ConvBnRelu,
    pool: MaxPool2d,
    stages: Vec<Vec<BasicBlock>>,
    decoders: Vec<DecoderBlock>,
    stem_skip: Option<ConvBnRelu>,
    final_up: UpBnRelu,
    final_conv: ConvBnRelu,
    classifier: ConvTranspose2d,
}

impl LinkNet {
    /// Inputs whose sides are multiples of this need no padding.
    pub const STRIDE: usize = 32;

    /// Class logits for a batch of normalised images.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, height, width]`, any height and width (padded
    ///   internally to a multiple of 32, the output cropped back)
    /// - returns `[batch, num_classes, height, width]`
    pub fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        let (x, size) = pad_to_multiple(images, Self::STRIDE);
        let stem = self.stem.forward(x); // [b, c0, h/2, w/2]
        // Projected now, so the stem's output is not held through the network.
        let fine = self
            .stem_skip
            .as_ref()
            .map(|p| p.forward_linear(stem.clone())); // [b, c0/2, h/2, w/2]
        let mut x = self.pool.forward(stem); // [b, c0, h/4, w/4]
        let mut encoded = Vec::with_capacity(4);
        for stage in &self.stages {
            for block in stage {
                x = block.forward(x);
            }
            encoded.push(x.clone()); // [b, c_i, h/2^(i+2), w/2^(i+2)]
        }
        // Decoder i takes the sum of deeper decoder output and encoder i's output.
        let mut d = self.decoders[3].forward(encoded[3].clone());
        for i in (0..3).rev() {
            d = self.decoders[i].forward(d + encoded[i].clone());
        }
        // [b, c0, h/4, w/4] after decoder 0.
        let mut x = self.final_up.forward(d); // [b, c0/2, h/2, w/2]
        if let Some(fine) = fine {
            x = x + fine;
        }
        let x = self.final_conv.forward(x); // [b, c0/2, h/2, w/2]
        crop(self.classifier.forward(x), size) // [b, classes, h, w]
    }

    /// Adds [`LinkNet::forward`] to `g`, reading the graph's input.
    pub fn export(&self, g: &mut Graph) -> GraphResult<Value> {
        let (x, size) = onnx::pad_input(g, Self::STRIDE)?;
        let stem = self.stem.export(g, "stem", x)?;
        let mut x = onnx::max_pool(g, "stem.pool", &self.pool, stem)?;
        let mut encoded = Vec::with_capacity(4);
        for (i, stage) in self.stages.iter().enumerate() {
            for (j, block) in stage.iter().enumerate() {
                x = block.export(g, &format!("encoder{i}.{j}"), x)?;
            }
            encoded.push(x);
        }
        let mut d = self.decoders[3].export(g, "decoder3", encoded[3])?;
        for i in (0..3).rev() {
            let sum = g.add(format!("decoder{i}.skip"), Op::Add, &[d, encoded[i]])?;
            d = self.decoders[i].export(g, &format!("decoder{i}"), sum)?;
        }
        let mut x = self.final_up.export(g, "final_up", d)?;
        if let Some(skip) = &self.stem_skip {
            let s = skip.export_linear(g, "stem_skip", stem)?;
            x = g.add("stem_skip.add", Op::Add, &[x, s])?;
        }
        let x = self.final_conv.export(g, "final_conv", x)?;
        let x = onnx::conv_transpose(g, "classifier", &self.classifier, x)?;
        onnx::crop_output(g, x, size)
    }
}
