//! Running a trained model: class masks for images, and scoring against labels.

use burn::prelude::*;
use firmware::Size;
use firmware::metrics::ConfusionMatrix;
use image::{GrayImage, imageops};

use crate::data::{Batch, BatchPlan, Normalize, Source, batches};
use crate::error::Result;
use crate::labels::LabelSpace;
use crate::model::Model;

/// Class ids (argmax over classes) for a batch of normalised images.
///
/// `images` is `[n, 3, h, w]` row-major; returns `[n, h, w]` class ids.
pub fn predict(model: &Model, images: Vec<f32>, n: usize, size: Size, device: &Device) -> Vec<u8> {
    predict_with(model, images, n, size, device, Tta::None)
}

/// Test-time augmentation: what is averaged before the argmax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Tta {
    /// The picture alone.
    #[default]
    None,
    /// The picture and its mirror image (mirrored back): twice the cost.
    Flip,
}

/// [`predict`] with test-time augmentation `tta`.
pub fn predict_with(
    model: &Model,
    images: Vec<f32>,
    n: usize,
    size: Size,
    device: &Device,
    tta: Tta,
) -> Vec<u8> {
    let x = batch_tensor(images, n, size, device);
    let classes = logits_with(model, x, tta).argmax(1); // [n, 1, h, w]
    classes.into_data().iter::<i64>().map(|c| c as u8).collect()
}

/// The scores `[n, classes, h, w]` (row-major) of a batch of normalised
/// images `[n, 3, h, w]`: what [`predict`] takes the argmax of.
pub fn logits(model: &Model, images: Vec<f32>, n: usize, size: Size, device: &Device) -> Vec<f32> {
    let x = batch_tensor(images, n, size, device);
    model.forward(x).into_data().iter::<f32>().collect()
}

/// `images` (`[n, 3, h, w]` row-major) as a tensor on `device`.
fn batch_tensor(images: Vec<f32>, n: usize, size: Size, device: &Device) -> Tensor<4> {
    let (h, w) = (size.height as usize, size.width as usize);
    Tensor::<4>::from_data(TensorData::new(images, [n, 3, h, w]), device)
}

/// The scores `[n, classes, h, w]` of `x` under test-time augmentation `tta`
/// (summed, not averaged, over the views: the argmax is the same).
fn logits_with(model: &Model, x: Tensor<4>, tta: Tta) -> Tensor<4> {
    match tta {
        Tta::None => model.forward(x),
        Tta::Flip => {
            let mirrored = model.forward(x.clone().flip([3])).flip([3]);
            model.forward(x) + mirrored
        }
    }
}

/// Resizes a mask with nearest-neighbour sampling.
pub fn resize_mask(mask: &[u8], from: Size, to: Size) -> Vec<u8> {
    if from == to {
        return mask.to_vec();
    }
    let img =
        GrayImage::from_raw(from.width, from.height, mask.to_vec()).expect("mask fits its size");
    imageops::resize(&img, to.width, to.height, imageops::FilterType::Nearest).into_raw()
}

/// The class mask of planar `logits`, with the runtime's tie rule.
pub(crate) fn argmax(logits: &[f32], classes: usize) -> Vec<u8> {
    let mut mask = vec![0; logits.len() / classes];
    firmware::post::argmax(logits, classes, &mut mask).expect("logits of whole planes");
    mask
}

/// Scores a batch's predictions against its masks, each at the mask's own size.
pub fn score(batch: &Batch, predicted: &[u8], matrix: &mut ConfusionMatrix) {
    let plane = batch.size.area();
    let mut offset = 0;
    for (k, mask_size) in batch.mask_sizes.iter().enumerate() {
        let pred = resize_mask(
            &predicted[k * plane..(k + 1) * plane],
            batch.size,
            *mask_size,
        );
        let truth = &batch.masks[offset..offset + mask_size.area()];
        matrix.add(truth, &pred);
        offset += mask_size.area();
    }
}

/// Evaluation settings.
#[derive(Clone, Debug)]
pub struct EvalPlan {
    /// The model's input size; images are resized to it.
    pub size: Size,
    /// Normalisation the model was trained with.
    pub normalize: Normalize,
    /// Classes of the model and the void value of the labels.
    pub labels: LabelSpace,
    /// Images per forward pass.
    pub batch: usize,
    /// Loader threads.
    pub workers: usize,
    /// Test-time augmentation.
    pub tta: Tta,
}

/// Scores `model` on every sample of `source` at the labels' own resolution:
/// predictions are resized to the ground truth (nearest) before counting, as
/// published CamVid results are.
pub fn evaluate(
    model: &Model,
    source: &Source,
    plan: &EvalPlan,
    device: &Device,
    mut on_batch: impl FnMut(usize),
) -> Result<ConfusionMatrix> {
    let mut matrix = ConfusionMatrix::new(plan.labels.num_classes(), Some(plan.labels.void));
    let batch_plan = BatchPlan {
        batch: plan.batch,
        size: plan.size,
        augment: None,
        normalize: plan.normalize.clone(),
        shuffle: None,
        void: plan.labels.void,
        workers: plan.workers,
        native_masks: true,
        crop: None,
    };
    for batch in batches(source, &batch_plan) {
        let batch = batch?;
        let predicted = predict_with(
            model,
            batch.images.clone(),
            batch.len,
            batch.size,
            device,
            plan.tta,
        );
        score(&batch, &predicted, &mut matrix);
        on_batch(batch.len);
    }
    Ok(matrix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn flip_averaging_makes_the_scores_mirror_symmetric() {
        let device = Device::flex();
        device.seed(3);
        let model = ModelConfig::Unet {
            num_classes: 5,
            base_width: 4,
            depth: 2,
            bilinear: false,
        }
        .init(&device);
        let (n, h, w) = (2, 12, 20);
        let x = Tensor::<4>::random(
            [n, 3, h, w],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        // How far the scores of `x` are from the mirrored scores of its mirror image.
        let asymmetry = |tta| {
            let a = logits_with(&model, x.clone(), tta);
            let b = logits_with(&model, x.clone().flip([3]), tta).flip([3]);
            (a - b).abs().max().into_scalar::<f32>()
        };
        // A plain network is not mirror-symmetric...
        assert!(asymmetry(Tta::None) > 1e-3);
        // ...its flip average is, exactly: f(x) + m(f(m(x))) is the mirror of
        // the same sum for m(x).
        assert_eq!(asymmetry(Tta::Flip), 0.0);
        let masks = predict_with(
            &model,
            x.into_data().iter::<f32>().collect(),
            n,
            Size::new(w as u32, h as u32),
            &device,
            Tta::Flip,
        );
        assert_eq!(masks.len(), n * h * w);
    }
}
