//! Segmentation losses over logits `[batch, classes, h, w]` and class-id targets
//! `[batch, h, w]`, with an ignore value (void) that contributes nothing.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use serde::{Deserialize, Serialize};

/// A weighted sum of losses; a weight of zero leaves a term out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// Weight of (class-weighted) cross-entropy.
    pub cross_entropy: f32,
    /// Weight of soft Dice loss (1 - mean Dice over classes present).
    pub dice: f32,
    /// Weight of focal loss.
    pub focal: f32,
    /// Focusing parameter of the focal loss.
    pub focal_gamma: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            cross_entropy: 1.0,
            dice: 0.0,
            focal: 0.0,
            focal_gamma: 2.0,
        }
    }
}

impl LossConfig {
    /// Parses `ce`, `dice`, `focal`, `bce+dice` or weighted sums such as `ce+0.5*dice`.
    pub fn parse(spec: &str) -> Result<LossConfig, String> {
        let mut cfg = LossConfig {
            cross_entropy: 0.0,
            dice: 0.0,
            focal: 0.0,
            focal_gamma: 2.0,
        };
        for term in spec.split('+') {
            let term = term.trim();
            let (w, name) = match term.split_once('*') {
                Some((w, n)) => (
                    w.trim()
                        .parse::<f32>()
                        .map_err(|_| format!("bad weight in loss term `{term}`"))?,
                    n.trim(),
                ),
                None => (1.0, term),
            };
            match name {
                // With two classes softmax cross-entropy is binary cross-entropy.
                "ce" | "cross-entropy" | "bce" => cfg.cross_entropy += w,
                "dice" => cfg.dice += w,
                "focal" => cfg.focal += w,
                other => {
                    return Err(format!(
                        "unknown loss `{other}`; use ce, bce, dice, focal or sums like ce+0.5*dice"
                    ));
                }
            }
        }
        Ok(cfg)
    }

    /// The loss of `logits` against `targets`, ignoring pixels equal to `ignore`.
    /// `class_weights` (one per class) weigh cross-entropy and focal terms.
    pub fn forward(
        &self,
        logits: Tensor<4>,
        targets: Tensor<3, Int>,
        class_weights: Option<&Tensor<1>>,
        ignore: u8,
    ) -> Tensor<1> {
        let [b, c, h, w] = logits.dims();
        let valid = targets.clone().not_equal_elem(ignore as i64); // [b, h, w]
        let safe = targets.mask_fill(valid.clone().bool_not(), 0);
        let valid = valid.float();
        let mut total = Tensor::<1>::zeros([1], &logits.device());
        if self.cross_entropy > 0.0 || self.focal > 0.0 {
            let logp = log_softmax(logits.clone(), 1);
            let picked: Tensor<3> = logp.gather(1, safe.clone().unsqueeze_dim(1)).squeeze_dim(1); // [b, h, w]
            let weight = match class_weights {
                Some(cw) => {
                    cw.clone()
                        .select(0, safe.clone().reshape([b * h * w]))
                        .reshape([b, h, w])
                        * valid.clone()
                }
                None => valid.clone(),
            };
            let norm = weight.clone().sum().clamp_min(1e-6);
            if self.cross_entropy > 0.0 {
                let ce = (picked.clone() * weight.clone()).sum().neg() / norm.clone();
                total = total + ce * self.cross_entropy;
            }
            if self.focal > 0.0 {
                let modulation = (picked.clone().exp().neg() + 1.0)
                    .clamp_min(0.0)
                    .powf_scalar(self.focal_gamma);
                let focal = (modulation * picked * weight).sum().neg() / norm;
                total = total + focal * self.focal;
            }
        }
        if self.dice > 0.0 {
            let probs = softmax(logits, 1) * valid.clone().unsqueeze_dim(1);
            let onehot: Tensor<4> =
                safe.one_hot::<4>(c).float().permute([0, 3, 1, 2]) * valid.unsqueeze_dim(1);
            let inter = (probs.clone() * onehot.clone()).sum_dims_squeeze::<1, _>(&[0, 2, 3]);
            let denom = probs.sum_dims_squeeze::<1, _>(&[0, 2, 3])
                + onehot.clone().sum_dims_squeeze::<1, _>(&[0, 2, 3]);
            let present = onehot
                .sum_dims_squeeze::<1, _>(&[0, 2, 3])
                .greater_elem(0.0)
                .float();
            let dice = (inter * 2.0 + 1e-6) / (denom + 1e-6);
            let mean = (dice * present.clone()).sum() / present.sum().clamp_min(1.0);
            total = total + (mean.neg() + 1.0) * self.dice;
        }
        total
    }
}

/// Median-frequency balancing (Eigen and Fergus 2015, as in SegNet): the weight of
/// class `c` is `median(freq) / freq(c)`, where `freq(c)` is the pixels of `c`
/// over the pixels of the images in which `c` appears. Absent classes get 0.
pub fn median_frequency_weights(
    class_pixels: &[u64],
    image_pixels_where_present: &[u64],
) -> Vec<f32> {
    let freq: Vec<Option<f64>> = class_pixels
        .iter()
        .zip(image_pixels_where_present)
        .map(|(&c, &t)| (c > 0 && t > 0).then(|| c as f64 / t as f64))
        .collect();
    let mut present: Vec<f64> = freq.iter().flatten().copied().collect();
    if present.is_empty() {
        return vec![1.0; class_pixels.len()];
    }
    present.sort_by(f64::total_cmp);
    let n = present.len();
    let median = if n % 2 == 1 {
        present[n / 2]
    } else {
        (present[n / 2 - 1] + present[n / 2]) / 2.0
    };
    freq.iter()
        .map(|f| f.map_or(0.0, |f| (median / f) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Device {
        Device::flex()
    }

    fn value(t: Tensor<1>) -> f32 {
        t.into_data().try_to_vec::<f32>().unwrap()[0]
    }

    /// Two pixels, two classes: logits (0, ln 3) and (ln 3, 0), targets 1 and 1.
    fn case() -> (Tensor<4>, Tensor<3, Int>) {
        let l3 = 3f32.ln();
        let logits = Tensor::<4>::from_data(
            TensorData::new(vec![0.0, l3, l3, 0.0], [1, 2, 1, 2]),
            &device(),
        );
        let targets =
            Tensor::<3, Int>::from_data(TensorData::new(vec![1i64, 1], [1, 1, 2]), &device());
        (logits, targets)
    }

    #[test]
    fn cross_entropy_by_hand() {
        // p(target) = 0.75 and 0.25: mean -ln p = (ln(4/3) + ln 4) / 2.
        let (logits, targets) = case();
        let loss = value(LossConfig::default().forward(logits, targets, None, 11));
        let expected = ((4.0f32 / 3.0).ln() + 4f32.ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }

    #[test]
    fn ignored_pixels_and_class_weights() {
        let (logits, _) = case();
        let targets =
            Tensor::<3, Int>::from_data(TensorData::new(vec![1i64, 11], [1, 1, 2]), &device());
        let loss = value(LossConfig::default().forward(logits.clone(), targets, None, 11));
        assert!((loss - (4.0f32 / 3.0).ln()).abs() < 1e-5, "{loss}");
        // Targets 0 and 1 with weights 1 and 3; both have p = 0.25: (1 + 3) ln 4 / (1 + 3).
        let targets =
            Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 1, 2]), &device());
        let w = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 3.0], [2]), &device());
        let loss = value(LossConfig::default().forward(logits, targets, Some(&w), 11));
        assert!((loss - 4f32.ln()).abs() < 1e-5, "{loss}");
    }

    #[test]
    fn dice_and_focal_by_hand() {
        let (logits, targets) = case();
        // Class 1 only in the targets: probs (0.75, 0.25), inter 1.0, denom 1.0 + 2 = 3.
        let dice = LossConfig {
            cross_entropy: 0.0,
            dice: 1.0,
            ..LossConfig::default()
        };
        let loss = value(dice.forward(logits.clone(), targets.clone(), None, 11));
        assert!((loss - (1.0 - 2.0 / 3.0)).abs() < 1e-5, "{loss}");
        // Focal with gamma 2: mean of (1-p)^2 * -ln p over p = 0.75, 0.25.
        let focal = LossConfig {
            cross_entropy: 0.0,
            focal: 1.0,
            ..LossConfig::default()
        };
        let loss = value(focal.forward(logits.clone(), targets.clone(), None, 11));
        let f = |p: f32| (1.0 - p).powi(2) * -p.ln();
        assert!((loss - (f(0.75) + f(0.25)) / 2.0).abs() < 1e-5, "{loss}");
        // A sum is the sum of its terms.
        let both = LossConfig::parse("ce+0.5*dice").unwrap();
        let ce = value(LossConfig::default().forward(logits.clone(), targets.clone(), None, 11));
        let sum = value(both.forward(logits, targets, None, 11));
        assert!((sum - ce - 0.5 * (1.0 - 2.0 / 3.0)).abs() < 1e-5);
    }

    #[test]
    fn parse_rejects_unknown_terms() {
        assert!(LossConfig::parse("ce+hinge").unwrap_err().contains("hinge"));
        assert_eq!(LossConfig::parse("bce+dice").unwrap().dice, 1.0);
    }

    #[test]
    fn median_frequency_matches_definition() {
        // freqs 0.5, 0.1, 0.2 -> median 0.2 -> weights 0.4, 2, 1; absent class 0.
        let w = median_frequency_weights(&[50, 10, 20, 0], &[100, 100, 100, 100]);
        assert_eq!(w, vec![0.4, 2.0, 1.0, 0.0]);
    }
}
