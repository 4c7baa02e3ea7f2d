//! Adam and AdamW with the whole update of a parameter tensor in one pass.
//!
//! Burn's `Adam`/`AdamW` build the update from about fifteen tensor
//! operations per parameter (moments, bias correction, square root, decay),
//! each a full pass over memory. This does the same arithmetic element by
//! element, in one pass split across threads, and keeps Burn's state type
//! (`AdamWState`), so checkpoints of the optimizer look the same.

use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer};
use burn::prelude::*;
use rayon::prelude::*;

/// Adam with L2 weight decay (added to the gradient, as Burn's `Adam` with a
/// `WeightDecayConfig`) or AdamW with decoupled weight decay (as Burn's
/// `AdamW`). Burn's defaults: betas 0.9 and 0.999, epsilon 1e-5.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedAdam {
    /// Decay of the first moment.
    pub beta_1: f32,
    /// Decay of the second moment.
    pub beta_2: f32,
    /// Added to the root of the second moment.
    pub epsilon: f32,
    /// Weight decay factor.
    pub weight_decay: f32,
    /// Decoupled decay (AdamW: `w -= lr * wd * w`) instead of L2 (`g += wd * w`).
    pub decoupled: bool,
}

impl FusedAdam {
    /// Adam with L2 weight decay `weight_decay` (0 for none).
    pub fn adam(weight_decay: f32) -> FusedAdam {
        FusedAdam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay,
            decoupled: false,
        }
    }

    /// AdamW with decoupled weight decay `weight_decay`.
    pub fn adamw(weight_decay: f32) -> FusedAdam {
        FusedAdam {
            decoupled: true,
            ..FusedAdam::adam(weight_decay)
        }
    }

    /// The optimizer for a whole module.
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

/// Elements updated by one thread at a time.
const CHUNK: usize = 1 << 14;

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        let shape = tensor.shape();
        let mut w = floats(tensor);
        let g = floats(grad);
        let (mut m, mut v, time) = match state {
            Some(s) => (
                floats(s.momentum.moment_1),
                floats(s.momentum.moment_2),
                s.momentum.time + 1,
            ),
            None => (vec![0.0; w.len()], vec![0.0; w.len()], 1),
        };
        let (b1, b2, eps) = (self.beta_1, self.beta_2, self.epsilon);
        let t = i32::try_from(time).unwrap_or(i32::MAX);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let lr = lr as f32;
        // AdamW shrinks the weight; Adam adds the decay to the gradient.
        let (keep, l2) = if self.decoupled {
            ((1.0 - lr as f64 * self.weight_decay as f64) as f32, 0.0)
        } else {
            (1.0, self.weight_decay)
        };
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((w, m), v), g)| {
                for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
                    let g = g + l2 * *w;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *w = *w * keep - lr * ((*m / c1) / ((*v / c2).sqrt() + eps));
                }
            });
        let tensor =
            |data: Vec<f32>| Tensor::<D>::from_data(TensorData::new(data, shape.clone()), &device);
        let momentum = AdaptiveMomentumState::new(time, tensor(m), tensor(v));
        (tensor(w), Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamWState::new(state.momentum.to_device(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::{AdamConfig, AdamWConfig, GradientsParams};
    use burn::tensor::Distribution;

    /// Five steps of the fused optimizer give the weights of Burn's own.
    #[test]
    fn matches_burns_adam_and_adamw() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let model = LinearConfig::new(300, 200).init(&device);
        let x = Tensor::<2>::random([8, 300], Distribution::Normal(0.0, 1.0), &device);
        let runs: [(FusedAdam, ModuleOptimizer); 3] = [
            (
                FusedAdam::adamw(0.01),
                AdamWConfig::new().with_weight_decay(0.01).init(),
            ),
            (
                FusedAdam::adam(0.01),
                AdamConfig::new()
                    .with_weight_decay(Some(WeightDecayConfig::new(0.01)))
                    .init(),
            ),
            (FusedAdam::adam(0.0), AdamConfig::new().init()),
        ];
        for (fused, mut reference) in runs {
            let (wa, wb) = five_steps(&fused, &mut reference, &model, &x, &device);
            let moved = largest_change(&wb, &weights(&model.weight));
            assert!(moved > 1e-3, "{fused:?}: the reference did not move");
            for (i, (x, y)) in wa.iter().zip(&wb).enumerate() {
                assert!(
                    (x - y).abs() < 1e-6 + 1e-4 * moved,
                    "{fused:?}: weight {i}: {x} vs {y}"
                );
            }
        }
    }

    /// The weights of `model` after five steps of `fused` (on the model's
    /// device) and after five steps of `reference` on a copy on `device`,
    /// with the loss `mean((model(x) - 0.5)²)` and a falling learning rate.
    fn five_steps(
        fused: &FusedAdam,
        reference: &mut ModuleOptimizer,
        model: &Linear,
        x: &Tensor<2>,
        device: &Device,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut optim = fused.clone().init();
        let (mut a, mut b) = (model.clone(), model.clone().fork(device));
        let xb = Tensor::<2>::from_data(x.clone().into_data(), device);
        let loss = |m: &Linear, x: &Tensor<2>| (m.forward(x.clone()) - 0.5).powf_scalar(2.0).mean();
        for step in 0..5 {
            let lr = 1e-2 / (step + 1) as f64;
            let ga = GradientsParams::from_grads(loss(&a, x).backward(), &a);
            let gb = GradientsParams::from_grads(loss(&b, &xb).backward(), &b);
            a = optim.step(lr, a, ga);
            b = reference.step(lr, b, gb);
        }
        (weights(&a.weight), weights(&b.weight))
    }

    fn weights(p: &Param<Tensor<2>>) -> Vec<f32> {
        p.val().into_data().try_to_vec::<f32>().unwrap()
    }

    /// The largest absolute difference between `a` and `b`.
    fn largest_change(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// What trains on a GPU, Burn's Adam and AdamW on wgpu (Mesa's lavapipe in
    /// CI), gives the weights of the CPU's fused optimizer after five steps.
    #[cfg(feature = "wgpu")]
    #[test]
    fn burns_adam_on_wgpu_matches_the_fused_optimizer_on_the_cpu() {
        let Some(gpu) = crate::device::lavapipe_device() else {
            return;
        };
        let cpu = Device::flex().autodiff();
        cpu.seed(3);
        let model = LinearConfig::new(300, 200).init(&cpu);
        let x = Tensor::<2>::random([8, 300], Distribution::Normal(0.0, 1.0), &cpu);
        let runs: [(FusedAdam, ModuleOptimizer); 2] = [
            (
                FusedAdam::adamw(0.01),
                AdamWConfig::new().with_weight_decay(0.01).init(),
            ),
            (FusedAdam::adam(0.0), AdamConfig::new().init()),
        ];
        for (fused, mut burns) in runs {
            let (wa, wb) = five_steps(&fused, &mut burns, &model, &x, &gpu);
            let moved = largest_change(&wa, &weights(&model.weight));
            assert!(moved > 1e-3, "{fused:?}: the weights did not move");
            for (i, (x, y)) in wa.iter().zip(&wb).enumerate() {
                assert!(
                    (x - y).abs() < 1e-6 + 1e-3 * moved,
                    "{fused:?}: weight {i}: cpu {x} vs wgpu {y}"
                );
            }
        }
    }
}
