//! Data parallel training: one step's batch split across several devices.
//!
//! The model, the optimiser and evaluation live on the first (*main*)
//! device. Each step, every other device gets a copy of the model
//! ([`Module::fork`]) and a consecutive part of the batch; the parts run
//! their forward and backward passes at the same time, each on a thread of
//! its own; their gradients are moved to the main device and summed
//! (`burn::optim::GradientsAccumulator`), and the optimiser steps once.
//!
//! This is burn-train's `MultiDeviceOptim::OptimMainDevice` strategy, run
//! inside edgeseg's own loop (which keeps its run folder, resumable schedule,
//! fused CPU loss and optimiser). burn-train's other strategy, and its
//! distributed data parallel, all-reduce through burn-collective, whose
//! device transport Burn 0.22 has only for CUDA (NCCL): gathering to the main
//! device works on every backend, wgpu and mixed ones included.
//!
//! Each part's loss is its mean over its own images, weighted by its share of
//! the batch, so the summed gradients are those of the mean over the whole
//! batch, as on one device. Two things differ from one device, as in any data
//! parallel training without synchronised batch norm: batch normalisation
//! normalises each part with its own statistics, and its running statistics
//! are the average of the parts' (Burn's `RunningState` averages the updates
//! made on each thread; which of a step's updates a replica's own update is
//! blended from can vary from run to run, so evaluation scores of a data
//! parallel run are reproducible only to float noise). The dice and weighted
//! cross-entropy terms are averaged per part too, which weights a part's
//! pixels slightly differently from one mean over the batch.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::loss::LossConfig;
use crate::model::Model;

/// The devices of a run, each with its Burn device (with autodiff) and the
/// class weights there.
#[derive(Debug)]
pub struct Replicas {
    devices: Vec<(DeviceSpec, Device)>,
    weights: Vec<Option<Tensor<1>>>,
}

/// One step's input, in host memory: `[len, 3, h, w]` images and `[len, h,
/// w]` class ids. Owned, so that one device takes it without a copy.
#[derive(Debug)]
pub struct StepBatch {
    /// Images, row-major.
    pub images: Vec<f32>,
    /// Class ids (void included).
    pub masks: Vec<u8>,
    /// Images in the batch.
    pub len: usize,
    /// Rows and columns of every image.
    pub hw: (usize, usize),
}

/// Refuses a batch of `batch` images for `devices` devices when some device
/// would get none.
pub fn check_batch(batch: usize, devices: usize) -> Result<()> {
    if batch < devices {
        return Err(Error::Invalid(format!(
            "--batch {batch} cannot be split across {devices} devices: give at least one image per device"
        )));
    }
    Ok(())
}

/// What one step's loss is made of.
#[derive(Debug)]
pub struct Objective<'a> {
    /// The loss.
    pub loss: &'a LossConfig,
    /// The void class id, ignored by the loss.
    pub void: u8,
}

impl Replicas {
    /// The devices `specs` (the first is the main device), with `class_weights`
    /// (one per class, or `None` for none) copied to each.
    pub fn new(specs: &[DeviceSpec], class_weights: Option<&[f32]>) -> Result<Replicas> {
        if specs.is_empty() {
            return Err(Error::Invalid("training needs at least one device".into()));
        }
        let devices = specs
            .iter()
            .map(|spec| Ok((*spec, spec.device()?.autodiff())))
            .collect::<Result<Vec<_>>>()?;
        let weights = devices
            .iter()
            .map(|(_, device)| {
                class_weights
                    .map(|w| Tensor::<1>::from_data(TensorData::new(w.to_vec(), [w.len()]), device))
            })
            .collect();
        Ok(Replicas { devices, weights })
    }

    /// The main device: where the model, the optimiser and evaluation are.
    pub fn main(&self) -> &Device {
        &self.devices[0].1
    }

    /// The main device's name.
    pub fn main_spec(&self) -> &DeviceSpec {
        &self.devices[0].0
    }

    /// Waits until every device has finished its queued work.
    pub fn sync(&self) -> Result<()> {
        for (spec, device) in &self.devices {
            device
                .sync()
                .map_err(|e| Error::Invalid(format!("{spec}: {e:?}")))?;
        }
        Ok(())
    }

    /// The images of part `i` of `n` of a `len`-image batch: consecutive,
    /// the first `len % n` parts one image longer.
    fn part(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
        let (per, extra) = (len / n, len % n);
        let start = i * per + i.min(extra);
        start..start + per + usize::from(i < extra)
    }

    /// The batch's loss (its mean over the batch, as a number) and the
    /// gradients of `model` (on the main device), the batch split across the
    /// devices (a batch shorter than the device count uses the first `len`).
    pub fn loss_and_grads(
        &self,
        model: &Model,
        batch: StepBatch,
        objective: &Objective,
    ) -> (f64, GradientsParams) {
        let parts = self.devices.len().min(batch.len).max(1);
        let (h, w) = batch.hw;
        let run = |i: usize, replica: Model, images: Vec<f32>, masks: &[u8]| {
            let (spec, device) = &self.devices[i];
            let n = masks.len() / (h * w);
            let share = n as f64 / batch.len as f64;
            let targets: Vec<i64> = masks.iter().map(|&m| i64::from(m)).collect();
            let x = Tensor::<4>::from_data(TensorData::new(images, [n, 3, h, w]), device);
            let y = Tensor::<3, Int>::from_data(TensorData::new(targets, [n, h, w]), device);
            let logits = replica.forward(x);
            let weights = self.weights[i].as_ref();
            // The fused passes on the CPU (they read the logits there), the
            // composed tensor operations elsewhere, so the logits stay on
            // the device.
            let loss = if spec.is_cpu() {
                objective.loss.forward(logits, y, weights, objective.void)
            } else {
                objective.loss.composed(logits, y, weights, objective.void)
            };
            let loss = if parts > 1 {
                loss.mul_scalar(share)
            } else {
                loss
            };
            let value = loss
                .clone()
                .into_data()
                .iter::<f64>()
                .next()
                .unwrap_or(f64::NAN);
            let grads = GradientsParams::from_grads(loss.backward(), &replica);
            let grads = if i == 0 {
                grads
            } else {
                grads.to_device(self.main(), &replica)
            };
            (value, grads)
        };
        if parts == 1 {
            return run(0, model.clone(), batch.images, &batch.masks);
        }
        let part = |i: usize| {
            let range = Self::part(batch.len, parts, i);
            let images = batch.images[range.start * 3 * h * w..range.end * 3 * h * w].to_vec();
            (images, &batch.masks[range.start * h * w..range.end * h * w])
        };
        let results: Vec<(f64, GradientsParams)> = std::thread::scope(|s| {
            let others: Vec<_> = (1..parts)
                .map(|i| {
                    let replica = model.clone().fork(&self.devices[i].1);
                    let (images, masks) = part(i);
                    let run = &run;
                    s.spawn(move || run(i, replica, images, masks))
                })
                .collect();
            let (images, masks) = part(0);
            let mut results = vec![run(0, model.clone(), images, masks)];
            for other in others {
                match other.join() {
                    Ok(result) => results.push(result),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            results
        });
        let mut accumulator = GradientsAccumulator::<Model>::new();
        let mut total = 0.0;
        for (value, grads) in results {
            total += value;
            accumulator.accumulate(model, grads);
        }
        (total, accumulator.grads())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two devices of a backend CI can run: lavapipe in CI (two wgpu devices,
    /// each with its own queue and memory, on the one adapter), or a GPU
    /// beside lavapipe where there is one.
    #[cfg(feature = "wgpu")]
    mod wgpu {
        use burn::module::{ModuleMapper, ModuleVisitor, Param};
        use burn::optim::{GradientsAccumulator, SgdConfig};

        use super::*;
        use crate::model::ModelConfig;

        const H: usize = 32;
        const W: usize = 48;

        fn devices() -> Option<[DeviceSpec; 2]> {
            crate::device::lavapipe()
                .then(|| ["wgpu:cpu".parse().unwrap(), "wgpu".parse().unwrap()])
        }

        /// A small U-Net (with batch norm) on `device`, the same every call:
        /// its weights come from a seeded generator of the test's own, as
        /// the device's generator is shared with tests running meanwhile.
        fn model(device: &Device) -> Model {
            struct Fill(firmware::rng::Rng);
            impl ModuleMapper for Fill {
                fn map_float<const D: usize>(
                    &mut self,
                    param: Param<Tensor<D>>,
                ) -> Param<Tensor<D>> {
                    param.map(|t| {
                        if !t.is_require_grad() {
                            return t;
                        }
                        let shape = t.shape();
                        let n = shape.num_elements();
                        // Weights scaled by their fan-in; 1-D ones (batch
                        // norm scales and shifts, biases) in [0.5, 1).
                        let (lo, hi) = match D {
                            1 => (0.5, 1.0),
                            _ => {
                                let s = (n as f32 / shape[0] as f32).sqrt().recip();
                                (-s, s)
                            }
                        };
                        let values: Vec<f32> = (0..n).map(|_| self.0.range(lo, hi)).collect();
                        Tensor::<D>::from_data(TensorData::new(values, shape), &t.device())
                            .require_grad()
                    })
                }
            }
            ModelConfig::Unet {
                num_classes: 11,
                base_width: 8,
                depth: 2,
                bilinear: false,
            }
            .init(device)
            .map(&mut Fill(firmware::rng::Rng::new(5)))
        }

        /// `n` synthetic-scene-like images: smooth random fields, and labels
        /// that follow them.
        fn batch(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
            let mut rng = firmware::rng::Rng::new(seed);
            let images = (0..n * 3 * H * W).map(|_| rng.range(-1.0, 1.0)).collect();
            let masks = (0..n * H * W).map(|_| rng.below(11) as u8).collect();
            (images, masks)
        }

        /// The trainable weights, flattened.
        fn trainable(model: &Model) -> Vec<f32> {
            struct Collect(Vec<f32>);
            impl ModuleVisitor for Collect {
                fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                    let value = param.val();
                    if value.is_require_grad() {
                        self.0.extend(value.into_data().iter::<f32>());
                    }
                }
            }
            let mut collect = Collect(Vec::new());
            model.visit(&mut collect);
            assert!(collect.0.len() > 1000, "{} weights", collect.0.len());
            collect.0
        }

        /// The largest difference between `a` and `b`, relative to `b`'s
        /// largest magnitude.
        fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let gap = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            gap / scale
        }

        fn objective(loss: &LossConfig) -> Objective<'_> {
            Objective { loss, void: 255 }
        }

        /// Three steps of plain SGD (whose steps scale with the gradient, unlike
        /// Adam's) of `replicas` on `batch`, from [`model`].
        fn three_steps(replicas: &Replicas, images: &[f32], masks: &[u8], len: usize) -> Model {
            let mut net = model(replicas.main());
            let mut optim = SgdConfig::new().init();
            let loss = LossConfig::default();
            for _ in 0..3 {
                let step = StepBatch {
                    images: images.to_vec(),
                    masks: masks.to_vec(),
                    len,
                    hw: (H, W),
                };
                let (value, grads) = replicas.loss_and_grads(&net, step, &objective(&loss));
                assert!(value.is_finite() && value > 0.0, "{value}");
                net = optim.step(0.1, net, grads);
            }
            net
        }

        /// A batch of one image twice has the statistics of the one image, so
        /// its split across two devices must give exactly what one device
        /// gives on the whole batch, batch norm included.
        #[test]
        fn two_devices_train_like_one_device_on_the_whole_batch() {
            let Some([a, b]) = devices() else {
                return;
            };
            let (image, mask) = batch(1, 1);
            let images = [image.clone(), image].concat();
            let masks = [mask.clone(), mask].concat();
            let one = three_steps(&Replicas::new(&[a], None).unwrap(), &images, &masks, 2);
            let two = three_steps(&Replicas::new(&[a, b], None).unwrap(), &images, &masks, 2);
            let gap = relative_gap(&trainable(&two), &trainable(&one));
            assert!(gap < 1e-4, "two devices differ from one by {gap}");
            // And training moved the weights: the comparison is not of two
            // untouched initialisations.
            let start = trainable(&model(&a.device().unwrap().autodiff()));
            assert!(relative_gap(&trainable(&one), &start) > 1e-3);
        }

        /// Unequal parts (two images and one) are weighted by their share:
        /// the result is one device accumulating the two parts' gradients,
        /// each part's mean loss times its share.
        #[test]
        fn unequal_parts_are_weighted_by_their_share_of_the_batch() {
            let Some([a, b]) = devices() else {
                return;
            };
            let (images, masks) = batch(3, 2);
            let two = three_steps(&Replicas::new(&[a, b], None).unwrap(), &images, &masks, 3);
            let device = a.device().unwrap().autodiff();
            let mut net = model(&device);
            let mut optim = SgdConfig::new().init();
            let loss = LossConfig::default();
            for _ in 0..3 {
                let mut sum = GradientsAccumulator::<Model>::new();
                for (range, share) in [(0..2, 2.0 / 3.0), (2..3, 1.0 / 3.0)] {
                    let n = range.len();
                    let x = images[range.start * 3 * H * W..range.end * 3 * H * W].to_vec();
                    let y: Vec<i64> = masks[range.start * H * W..range.end * H * W]
                        .iter()
                        .map(|&m| i64::from(m))
                        .collect();
                    let x = Tensor::<4>::from_data(TensorData::new(x, [n, 3, H, W]), &device);
                    let y = Tensor::<3, Int>::from_data(TensorData::new(y, [n, H, W]), &device);
                    let l = loss
                        .composed(net.forward(x), y, None, 255)
                        .mul_scalar(share);
                    sum.accumulate(&net, GradientsParams::from_grads(l.backward(), &net));
                }
                net = optim.step(0.1, net, sum.grads());
            }
            let gap = relative_gap(&trainable(&two), &trainable(&net));
            assert!(
                gap < 1e-4,
                "two devices differ from the weighted sum by {gap}"
            );
        }
    }

    #[test]
    fn parts_are_consecutive_cover_the_batch_and_differ_by_one_at_most() {
        for len in 1..20 {
            for n in 1..=len.min(5) {
                let parts: Vec<_> = (0..n).map(|i| Replicas::part(len, n, i)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[n - 1].end, len);
                for pair in parts.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                    assert!(pair[0].len() - pair[1].len() <= 1);
                }
            }
        }
    }
}
