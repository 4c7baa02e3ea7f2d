//! The segmentation models: [`UNet`] and [`LinkNet`], behind one [`Model`] enum
//! and one serialisable [`ModelConfig`].

pub mod blocks;
pub mod linknet;
pub mod onnx;
pub mod pretrained;
pub mod unet;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use linknet::{LinkNet, LinkNetConfig};
pub use unet::{UNet, UNetConfig};

/// Which architecture, with its hyper-parameters; saved in `config.json` beside
/// the weights so evaluation and export rebuild exactly the trained network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "architecture", rename_all = "lowercase")]
pub enum ModelConfig {
    /// U-Net.
    Unet {
        /// Output classes.
        num_classes: usize,
        /// Channels of the first level.
        base_width: usize,
        /// Number of poolings.
        depth: usize,
        /// Bilinear upsampling instead of transposed convolutions.
        bilinear: bool,
    },
    /// LinkNet with a ResNet encoder.
    Linknet {
        /// Output classes.
        num_classes: usize,
        /// Residual blocks per encoder stage.
        blocks: [usize; 4],
        /// Channel multiplier.
        width: f32,
        /// A skip from the stem's half-resolution output into the last decoder
        /// stage (not in the paper; absent in configs from before it existed).
        #[serde(default)]
        stem_skip: bool,
    },
}

impl ModelConfig {
    /// U-Net with `base_width` channels at the first of `depth` + 1 levels.
    pub fn unet(num_classes: usize, base_width: usize) -> ModelConfig {
        ModelConfig::Unet {
            num_classes,
            base_width,
            depth: 4,
            bilinear: false,
        }
    }

    /// LinkNet-18 (`resnet_depth` 18) or LinkNet-34 (34) at channel multiplier `width`.
    pub fn linknet(num_classes: usize, resnet_depth: u32, width: f32) -> ModelConfig {
        let blocks = if resnet_depth == 34 {
            [3, 4, 6, 3]
        } else {
            [2, 2, 2, 2]
        };
        ModelConfig::Linknet {
            num_classes,
            blocks,
            width,
            stem_skip: false,
        }
    }

    /// The same model with LinkNet's stem skip switched on or off (U-Net has none).
    pub fn with_stem_skip(mut self, on: bool) -> ModelConfig {
        if let ModelConfig::Linknet { stem_skip, .. } = &mut self {
            *stem_skip = on;
        }
        self
    }

    /// A short name such as `unet16` or `linknet18x0.5`.
    pub fn name(&self) -> String {
        match self {
            ModelConfig::Unet { base_width, .. } => format!("unet{base_width}"),
            ModelConfig::Linknet {
                blocks,
                width,
                stem_skip,
                ..
            } => {
                let depth = if blocks == &[3, 4, 6, 3] { 34 } else { 18 };
                let width = if *width == 1.0 {
                    String::new()
                } else {
                    format!("x{width}")
                };
                let skip = if *stem_skip { "+stemskip" } else { "" };
                format!("linknet{depth}{width}{skip}")
            }
        }
    }

    /// Output classes.
    pub fn num_classes(&self) -> usize {
        match self {
            ModelConfig::Unet { num_classes, .. } | ModelConfig::Linknet { num_classes, .. } => {
                *num_classes
            }
        }
    }

    /// Builds the network with fresh weights on `device`.
    pub fn init(&self, device: &Device) -> Model {
        match *self {
            ModelConfig::Unet {
                num_classes,
                base_width,
                depth,
                bilinear,
            } => Model::Unet(
                UNetConfig::new()
                    .with_num_classes(num_classes)
                    .with_base_width(base_width)
                    .with_depth(depth)
                    .with_bilinear(bilinear)
                    .init(device),
            ),
            ModelConfig::Linknet {
                num_classes,
                blocks,
                width,
                stem_skip,
            } => Model::Linknet(
                LinkNetConfig::new()
                    .with_num_classes(num_classes)
                    .with_blocks(blocks)
                    .with_width(width)
                    .with_stem_skip(stem_skip)
                    .init(device),
            ),
        }
    }
}

/// A segmentation network of either architecture.
// A process holds one or two models, so the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// U-Net.
    Unet(UNet),
    /// LinkNet.
    Linknet(LinkNet),
}

impl Model {
    /// Class logits for a batch of normalised images.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, height, width]`, any size
    /// - returns `[batch, num_classes, height, width]`
    pub fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        match self {
            Model::Unet(m) => m.forward(images),
            Model::Linknet(m) => m.forward(images),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_of(config: &ModelConfig, h: usize, w: usize) -> [usize; 4] {
        let device = Device::flex();
        let model = config.init(&device);
        let x = Tensor::<4>::random(
            [2, 3, h, w],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        model.forward(x).dims()
    }

    #[test]
    fn unet_keeps_any_size() {
        let config = ModelConfig::Unet {
            num_classes: 11,
            base_width: 4,
            depth: 3,
            bilinear: false,
        };
        assert_eq!(shape_of(&config, 32, 48), [2, 11, 32, 48]);
        assert_eq!(shape_of(&config, 37, 51), [2, 11, 37, 51]);
        let bilinear = ModelConfig::Unet {
            num_classes: 5,
            base_width: 4,
            depth: 2,
            bilinear: true,
        };
        assert_eq!(shape_of(&bilinear, 30, 17), [2, 5, 30, 17]);
    }

    #[test]
    fn linknet_keeps_any_size() {
        let config = ModelConfig::linknet(11, 18, 0.125);
        assert_eq!(shape_of(&config, 64, 96), [2, 11, 64, 96]);
        assert_eq!(shape_of(&config, 45, 70), [2, 11, 45, 70]);
        let deep = ModelConfig::linknet(3, 34, 0.125);
        assert_eq!(shape_of(&deep, 33, 33), [2, 3, 33, 33]);
        assert_eq!(shape_of(&deep, 7, 5), [2, 3, 7, 5]);
        let skip = ModelConfig::linknet(11, 18, 0.125).with_stem_skip(true);
        assert_eq!(shape_of(&skip, 45, 70), [2, 11, 45, 70]);
        assert_eq!(shape_of(&skip, 7, 5), [2, 11, 7, 5]);
    }

    #[test]
    fn config_round_trips_through_json() {
        for config in [
            ModelConfig::unet(11, 16),
            ModelConfig::linknet(11, 34, 0.5),
            ModelConfig::linknet(11, 18, 0.5).with_stem_skip(true),
        ] {
            let json = serde_json::to_string(&config).unwrap();
            assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), config);
        }
        // A config.json written before the stem skip existed still loads, without it.
        let old = r#"{"architecture":"linknet","num_classes":11,"blocks":[2,2,2,2],"width":0.5}"#;
        assert_eq!(
            serde_json::from_str::<ModelConfig>(old).unwrap(),
            ModelConfig::linknet(11, 18, 0.5)
        );
        assert_eq!(ModelConfig::linknet(11, 34, 0.5).name(), "linknet34x0.5");
        assert_eq!(
            ModelConfig::linknet(11, 18, 1.0)
                .with_stem_skip(true)
                .name(),
            "linknet18+stemskip"
        );
        assert_eq!(ModelConfig::unet(11, 16).name(), "unet16");
    }
}
