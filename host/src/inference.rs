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
    let (h, w) = (size.height as usize, size.width as usize);
    let x = Tensor::<4>::from_data(TensorData::new(images, [n, 3, h, w]), device);
    let classes = model.forward(x).argmax(1); // [n, 1, h, w]
    classes.into_data().iter::<i64>().map(|c| c as u8).collect()
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
        let predicted = predict(model, batch.images.clone(), batch.len, batch.size, device);
        score(&batch, &predicted, &mut matrix);
        on_batch(batch.len);
    }
    Ok(matrix)
}
