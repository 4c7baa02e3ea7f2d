//! ImageNet encoder weights: a torchvision-named ResNet state dict, written by the
//! test as safetensors, lands in LinkNet's encoder tensor for tensor; files that do
//! not fit are clear errors naming the file.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::*;
use burn::store::ModuleSnapshot;
use host::model::pretrained::load_resnet_encoder;
use host::model::{LinkNet, LinkNetConfig};
use safetensors::tensor::{Dtype, TensorView};

/// One tensor of a torchvision state dict: name, shape, f32 values.
type Entry = (String, Vec<usize>, Vec<f32>);

/// The encoder tensors of torchvision's `resnet{18,34}` for `blocks` per stage,
/// plus the classifier, with distinct deterministic values (positive variances).
fn torchvision_resnet(blocks: [usize; 4]) -> Vec<Entry> {
    let mut shapes: Vec<(String, Vec<usize>)> = vec![("conv1.weight".into(), vec![64, 3, 7, 7])];
    let bn = |shapes: &mut Vec<(String, Vec<usize>)>, name: &str, c: usize| {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            shapes.push((format!("{name}.{p}"), vec![c]));
        }
    };
    bn(&mut shapes, "bn1", 64);
    for (stage, &n) in blocks.iter().enumerate() {
        let c = 64 << stage;
        let c_in = if stage == 0 { 64 } else { c / 2 };
        for j in 0..n {
            let prefix = format!("layer{}.{j}", stage + 1);
            let input = if j == 0 { c_in } else { c };
            shapes.push((format!("{prefix}.conv1.weight"), vec![c, input, 3, 3]));
            bn(&mut shapes, &format!("{prefix}.bn1"), c);
            shapes.push((format!("{prefix}.conv2.weight"), vec![c, c, 3, 3]));
            bn(&mut shapes, &format!("{prefix}.bn2"), c);
            if j == 0 && stage > 0 {
                shapes.push((format!("{prefix}.downsample.0.weight"), vec![c, c_in, 1, 1]));
                bn(&mut shapes, &format!("{prefix}.downsample.1"), c);
            }
        }
    }
    shapes.push(("fc.weight".into(), vec![1000, 512]));
    shapes.push(("fc.bias".into(), vec![1000]));
    shapes
        .into_iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let n: usize = shape.iter().product();
            let values = (0..n)
                .map(|k| {
                    let v = ((t * 7919 + k * 31) % 1009) as f32 / 1009.0 - 0.5;
                    if name.ends_with("running_var") {
                        v.abs() + 0.1
                    } else {
                        v
                    }
                })
                .collect();
            (name, shape, values)
        })
        .collect()
}

/// Writes `entries` as a safetensors file, with the `num_batches_tracked`
/// counters (int64 scalars) a torchvision state dict also holds.
fn write_safetensors(path: &Path, entries: &[Entry]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = entries
        .iter()
        .map(|(name, shape, values)| {
            let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), shape.clone(), raw, Dtype::F32)
        })
        .chain(
            entries
                .iter()
                .filter_map(|(name, _, _)| name.strip_suffix(".running_mean"))
                .map(|bn| {
                    let raw = 100i64.to_le_bytes().to_vec();
                    (format!("{bn}.num_batches_tracked"), vec![], raw, Dtype::I64)
                }),
        )
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, shape, raw, dtype)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), raw).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn linknet(blocks: [usize; 4], width: f32) -> LinkNet {
    LinkNetConfig::new()
        .with_blocks(blocks)
        .with_width(width)
        .init(&Device::flex())
}

/// The model's tensors by path, as f32 vectors.
fn tensors(net: &LinkNet) -> HashMap<String, Vec<f32>> {
    net.collect(None, None, false)
        .iter()
        .map(|t| {
            let data = burn::store::bridge::to_data(t).unwrap();
            (
                t.name.clone(),
                data.convert::<f32>().try_to_vec::<f32>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn torchvision_resnet18_weights_fill_the_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18.safetensors");
    let file = torchvision_resnet([2, 2, 2, 2]);
    write_safetensors(&path, &file);

    let mut net = linknet([2, 2, 2, 2], 1.0);
    let before = tensors(&net);
    let loaded = load_resnet_encoder(&mut net, &path).unwrap();
    let after = tensors(&net);
    // 20 convolutions and 20 batch norms of four tensors each.
    assert_eq!(loaded, 20 + 20 * 4);

    let value = |name: &str| &file.iter().find(|(n, _, _)| n == name).unwrap().2;
    for (burn, torch) in [
        ("stem.conv.weight", "conv1.weight"),
        ("stem.bn.gamma", "bn1.weight"),
        ("stem.bn.beta", "bn1.bias"),
        ("stages.0.1.conv2.conv.weight", "layer1.1.conv2.weight"),
        (
            "stages.1.0.downsample.conv.weight",
            "layer2.0.downsample.0.weight",
        ),
        (
            "stages.1.0.downsample.bn.running_mean",
            "layer2.0.downsample.1.running_mean",
        ),
        (
            "stages.3.1.conv2.bn.running_var",
            "layer4.1.bn2.running_var",
        ),
        ("stages.3.0.conv1.bn.beta", "layer4.0.bn1.bias"),
    ] {
        assert_eq!(&after[burn], value(torch), "{burn} from {torch}");
        assert_ne!(before[burn], after[burn], "{burn} unchanged");
    }
    // The decoder keeps its own initialisation.
    for (name, v) in &after {
        if !(name.starts_with("stem.") || name.starts_with("stages.")) {
            assert_eq!(&before[name], v, "{name} changed");
        }
    }
}

#[test]
fn weights_that_do_not_fit_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let r18 = dir.path().join("resnet18.safetensors");
    write_safetensors(&r18, &torchvision_resnet([2, 2, 2, 2]));
    let deeper = dir.path().join("deeper.safetensors");
    write_safetensors(&deeper, &torchvision_resnet([3, 2, 2, 2]));
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a tensor file").unwrap();
    let wrong_kind = dir.path().join("resnet18.onnx");
    std::fs::write(&wrong_kind, b"").unwrap();

    let cases: [(&Path, LinkNet, &str); 6] = [
        (&r18, linknet([2, 2, 2, 2], 0.5), "--width 1.0"),
        (&r18, linknet([3, 4, 6, 3], 1.0), "missing"),
        (&deeper, linknet([2, 2, 2, 2], 1.0), "no place"),
        (&garbage, linknet([2, 2, 2, 2], 1.0), "safetensors"),
        (&wrong_kind, linknet([2, 2, 2, 2], 1.0), ".pth"),
        (
            &dir.path().join("absent.pth"),
            linknet([2, 2, 2, 2], 1.0),
            "no such file",
        ),
    ];
    for (path, mut net, expected) in cases {
        let err = load_resnet_encoder(&mut net, path).unwrap_err().to_string();
        eprintln!("{err}");
        assert!(
            err.contains(&*path.to_string_lossy()) && err.contains(expected),
            "{}: {err}",
            path.display()
        );
    }
}
