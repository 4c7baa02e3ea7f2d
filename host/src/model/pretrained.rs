//! ImageNet weights for LinkNet's ResNet encoder, read from the files people
//! download: torchvision's `resnet18-f37072fd.pth` / `resnet34-b627a593.pth`
//! (PyTorch pickles), or the same state dict saved as safetensors.
//!
//! torchvision names the encoder `conv1`, `bn1`, `layer{1..4}.{block}.{conv1,bn1,
//! conv2,bn2,downsample.0,downsample.1}`; LinkNet names it `stem` and
//! `stages.{0..3}.{block}` with a [`ConvBnRelu`](super::blocks::ConvBnRelu) per
//! convolution. The classifier (`fc`) and the batch-norm step counters are not
//! used. Every encoder tensor must be in the file with the right shape, so a
//! ResNet-34 file given to a ResNet-18 model, a width other than 1.0, or a file
//! of some other network is an error that says what did not fit.

use std::path::Path;

use burn::store::{
    ApplyResult, KeyRemapper, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};

use super::LinkNet;
use crate::error::{Error, Result};

/// torchvision's encoder names (left) to LinkNet's (right), applied in order.
fn torchvision_names() -> Vec<(String, String)> {
    let mut patterns = vec![
        (r"^conv1\.(.+)$".to_string(), "stem.conv.$1".to_string()),
        (r"^bn1\.(.+)$".to_string(), "stem.bn.$1".to_string()),
    ];
    for stage in 0..4 {
        let layer = stage + 1;
        patterns.extend([
            (
                format!(r"^layer{layer}\.(\d+)\.conv([12])\.(.+)$"),
                format!("stages.{stage}.$1.conv$2.conv.$3"),
            ),
            (
                format!(r"^layer{layer}\.(\d+)\.bn([12])\.(.+)$"),
                format!("stages.{stage}.$1.conv$2.bn.$3"),
            ),
            (
                format!(r"^layer{layer}\.(\d+)\.downsample\.0\.(.+)$"),
                format!("stages.{stage}.$1.downsample.conv.$2"),
            ),
            (
                format!(r"^layer{layer}\.(\d+)\.downsample\.1\.(.+)$"),
                format!("stages.{stage}.$1.downsample.bn.$2"),
            ),
        ]);
    }
    patterns
}

/// Whether a LinkNet tensor belongs to the encoder, the part the file fills;
/// the decoder's tensors are expected to be absent from it.
fn in_encoder(path: &str, _container: &str) -> bool {
    path.starts_with("stem.") || path.starts_with("stages.")
}

/// Whether a tensor of the file may go unused: the ImageNet classifier and
/// PyTorch's batch-norm step counters.
fn ignorable(name: &str) -> bool {
    name.starts_with("fc.") || name.ends_with("num_batches_tracked")
}

/// Applies `store` to `net`; a reader's error, cut short (some list every
/// tensor of the file), says which `format` the file was read as.
fn apply<S: ModuleStore>(
    net: &mut LinkNet,
    store: &mut S,
    format: &str,
) -> std::result::Result<ApplyResult, String> {
    net.load_from(store).map_err(|e| {
        let cut: String = e.to_string().chars().take(300).collect();
        format!("cannot read as {format}: {cut}")
    })
}

/// Copies ImageNet ResNet weights from `path` (`.pth`/`.pt` or `.safetensors`,
/// torchvision names) into the encoder of `net` (stem and the four stages); the
/// decoder keeps its fresh initialisation. Returns the number of tensors loaded.
pub fn load_resnet_encoder(net: &mut LinkNet, path: &Path) -> Result<usize> {
    let bad = |what: String| Error::BadFile {
        path: path.to_path_buf(),
        what,
    };
    if !path.is_file() {
        return Err(bad("no such file".into()));
    }
    let remapper = KeyRemapper::from_patterns(torchvision_names())
        .expect("the torchvision name patterns are valid regular expressions");
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    // Shapes are checked below, from the result, to report the first mismatch only.
    let result = match extension.as_str() {
        "safetensors" => apply(
            net,
            &mut SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .remap(remapper)
                .with_predicate(in_encoder)
                .allow_partial(true)
                .validate(false),
            "safetensors",
        ),
        "pth" | "pt" | "bin" => apply(
            net,
            &mut PytorchStore::from_file(path)
                .remap(remapper)
                .with_predicate(in_encoder)
                .allow_partial(true)
                .validate(false),
            "a PyTorch state dict",
        ),
        _ => {
            return Err(bad(
                "expected a .pth, .pt or .safetensors file of torchvision ResNet weights".into(),
            ));
        }
    }
    .map_err(bad)?;
    if let Some(e) = result.errors.first() {
        return Err(bad(format!(
            "{} tensors do not fit the encoder, first: {e} (ImageNet weights need \
             --width 1.0 and the ResNet depth the file was trained with)",
            result.errors.len()
        )));
    }
    let missing: Vec<&str> = result
        .missing
        .iter()
        .filter(|(p, container)| in_encoder(p, container))
        .map(|(p, _)| p.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "{} encoder tensors are missing, first: {} (not torchvision ResNet weights, or a \
             shallower ResNet than the model's)",
            missing.len(),
            missing[..missing.len().min(3)].join(", ")
        )));
    }
    let unused: Vec<&str> = result
        .unused
        .iter()
        .map(String::as_str)
        .filter(|p| !ignorable(p))
        .collect();
    if !unused.is_empty() {
        return Err(bad(format!(
            "{} tensors have no place in the encoder, first: {} (a deeper ResNet than the \
             model's, or another network)",
            unused.len(),
            unused[..unused.len().min(3)].join(", ")
        )));
    }
    Ok(result.applied.len())
}
