//! What a board needs to know about a model besides its graph, carried inside
//! the ONNX file as `metadata_props` so one file is the whole deployment.
//!
//! Keys (all values are strings; lists are JSON):
//!
//! | key | example |
//! | --- | --- |
//! | `edgeseg.format` | `1` |
//! | `edgeseg.class_names` | `["Sky","Building",...]` |
//! | `edgeseg.palette` | `[[128,128,128],...]` |
//! | `edgeseg.void` | `11` (absent when the labels have no void id) |
//! | `edgeseg.input_size` | `256x192` |
//! | `edgeseg.mean` / `edgeseg.std` | `[0.485,0.456,0.406]` (0..1 units) |
//! | `edgeseg.architecture` | `linknet18x0.5` |
//! | `edgeseg.val_miou` | `0.7312` |
//! | `edgeseg.precision` | `float32` or `int8` |

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::Size;

/// Version of the metadata layout written by this crate.
pub const FORMAT: u32 = 1;

/// The deployment facts of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// One name per output channel.
    pub class_names: Vec<String>,
    /// One display colour per class.
    pub palette: Vec<[u8; 3]>,
    /// The label id that marks unlabelled pixels in the training data, if any.
    pub void: Option<u8>,
    /// The input the model was exported for.
    pub input_size: Size,
    /// Per-channel mean subtracted from RGB in 0..1 units.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided out after the mean.
    pub std: [f32; 3],
    /// Architecture name, such as `unet16` or `linknet18x0.5`.
    pub architecture: String,
    /// Validation mean IoU of the exported weights (NaN if unknown).
    pub val_miou: f64,
    /// `float32` or `int8`.
    pub precision: String,
}

/// Metadata that is missing or malformed; names the key.
#[derive(Debug, thiserror::Error)]
#[error("model metadata `{key}`: {what}")]
pub struct MetadataError {
    /// The key at fault.
    pub key: String,
    /// What is wrong with it.
    pub what: String,
}

impl ModelInfo {
    /// The key/value pairs to store in the model file.
    pub fn to_props(&self) -> Vec<(String, String)> {
        let json = |v: serde_json::Value| v.to_string();
        let mut props = vec![
            ("edgeseg.format", FORMAT.to_string()),
            ("edgeseg.class_names", json(self.class_names.clone().into())),
            (
                "edgeseg.palette",
                json(serde_json::json!(self.palette.clone())),
            ),
            ("edgeseg.input_size", self.input_size.to_string()),
            ("edgeseg.mean", json(serde_json::json!(self.mean))),
            ("edgeseg.std", json(serde_json::json!(self.std))),
            ("edgeseg.architecture", self.architecture.clone()),
            ("edgeseg.val_miou", format!("{:.6}", self.val_miou)),
            ("edgeseg.precision", self.precision.clone()),
        ];
        if let Some(void) = self.void {
            props.push(("edgeseg.void", void.to_string()));
        }
        props.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Reads the pairs written by [`ModelInfo::to_props`]; other keys are ignored.
    pub fn from_props<'a>(
        props: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ModelInfo, MetadataError> {
        let props: Vec<(&str, &str)> = props.into_iter().collect();
        let get = |key: &str| -> Result<&str, MetadataError> {
            props
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .ok_or_else(|| MetadataError {
                    key: key.into(),
                    what: "missing: was the file exported by `edgeseg export`?".into(),
                })
        };
        fn parse<T: serde::de::DeserializeOwned>(key: &str, v: &str) -> Result<T, MetadataError> {
            serde_json::from_str(v).map_err(|e| MetadataError {
                key: key.into(),
                what: format!("{v:?} is not valid: {e}"),
            })
        }
        let format: u32 = parse("edgeseg.format", get("edgeseg.format")?)?;
        if format > FORMAT {
            return Err(MetadataError {
                key: "edgeseg.format".into(),
                what: format!("version {format} is newer than this runtime's {FORMAT}"),
            });
        }
        let class_names: Vec<String> = parse("edgeseg.class_names", get("edgeseg.class_names")?)?;
        let palette: Vec<[u8; 3]> = parse("edgeseg.palette", get("edgeseg.palette")?)?;
        if palette.len() != class_names.len() || class_names.is_empty() {
            return Err(MetadataError {
                key: "edgeseg.palette".into(),
                what: format!(
                    "{} colours for {} classes",
                    palette.len(),
                    class_names.len()
                ),
            });
        }
        let input_size = get("edgeseg.input_size")?;
        let input_size = input_size.parse::<Size>().map_err(|e| MetadataError {
            key: "edgeseg.input_size".into(),
            what: format!("{input_size:?}: {e}"),
        })?;
        let void = match props.iter().find(|(k, _)| *k == "edgeseg.void") {
            Some((k, v)) => Some(parse(k, v)?),
            None => None,
        };
        let std: [f32; 3] = parse("edgeseg.std", get("edgeseg.std")?)?;
        if std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
            return Err(MetadataError {
                key: "edgeseg.std".into(),
                what: format!("{std:?} must be positive"),
            });
        }
        // A number past f32's range reads as infinity.
        let mean: [f32; 3] = parse("edgeseg.mean", get("edgeseg.mean")?)?;
        if mean.iter().any(|m| !m.is_finite()) {
            return Err(MetadataError {
                key: "edgeseg.mean".into(),
                what: format!("{mean:?} must be finite"),
            });
        }
        Ok(ModelInfo {
            class_names,
            palette,
            void,
            input_size,
            mean,
            std,
            architecture: get("edgeseg.architecture")?.to_string(),
            val_miou: get("edgeseg.val_miou")?.parse().unwrap_or(f64::NAN),
            precision: get("edgeseg.precision")?.to_string(),
        })
    }

    /// Classes the model predicts.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            class_names: crate::CLASS_NAMES[..crate::NUM_CLASSES]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            palette: crate::PALETTE[..crate::NUM_CLASSES].to_vec(),
            void: Some(11),
            input_size: Size::new(256, 192),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            architecture: "linknet18x0.5".into(),
            val_miou: 0.731,
            precision: "float32".into(),
        }
    }

    #[test]
    fn round_trips() {
        let props = info().to_props();
        let back =
            ModelInfo::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, info());
    }

    #[test]
    fn errors_name_the_key() {
        let mut props = info().to_props();
        props.retain(|(k, _)| k != "edgeseg.input_size");
        let err =
            ModelInfo::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
        assert!(err.to_string().contains("edgeseg.input_size"), "{err}");
        let mut props = info().to_props();
        props[2].1 = "[[1,2,3]]".into();
        let err =
            ModelInfo::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
        assert!(
            err.to_string().contains("1 colours for 11 classes"),
            "{err}"
        );
    }

    /// Found by the `model_info` fuzz target: a mean past f32's range read as
    /// infinity, was accepted, and wrote back as `null`.
    #[test]
    fn means_out_of_range_are_refused() {
        let mut props = info().to_props();
        let at = props.iter().position(|(k, _)| k == "edgeseg.mean").unwrap();
        props[at].1 = "[0.485,4.56e85,0.406]".into();
        let err =
            ModelInfo::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
        assert!(
            err.to_string().contains("edgeseg.mean") && err.to_string().contains("finite"),
            "{err}"
        );
    }
}
