//! Segmentation metrics from one confusion matrix, as the field reports them.
//!
//! Rows are ground truth, columns predictions. Pixels whose ground truth is the
//! ignore value (void) are not counted; predictions outside the class range are
//! counted as wrong for their ground-truth class.

use alloc::vec;
use alloc::vec::Vec;

/// A `classes` x `classes` confusion matrix of pixel counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    ignore: Option<u8>,
    counts: Vec<u64>,
    /// Valid ground-truth pixels whose prediction was outside the class range.
    out_of_range: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix over `classes` classes; ground truth equal to `ignore` is skipped.
    pub fn new(classes: usize, ignore: Option<u8>) -> ConfusionMatrix {
        ConfusionMatrix {
            classes,
            ignore,
            counts: vec![0; classes * classes],
            out_of_range: vec![0; classes],
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Pixels of ground truth `truth` predicted as `pred`.
    pub fn get(&self, truth: usize, pred: usize) -> u64 {
        self.counts[truth * self.classes + pred]
    }

    /// The matrix as rows of counts (ground truth by prediction).
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts
            .chunks(self.classes)
            .map(|r| r.to_vec())
            .collect()
    }

    /// Adds a prediction and its ground truth (same length, one class id per pixel).
    ///
    /// Ground-truth values that are neither a class nor the ignore value are skipped
    /// and returned as a count, so callers can report bad labels.
    pub fn add(&mut self, truth: &[u8], pred: &[u8]) -> u64 {
        assert_eq!(
            truth.len(),
            pred.len(),
            "prediction and ground truth differ in size"
        );
        let mut skipped = 0;
        for (&t, &p) in truth.iter().zip(pred) {
            if Some(t) == self.ignore {
                continue;
            }
            let t = t as usize;
            if t >= self.classes {
                skipped += 1;
            } else if (p as usize) < self.classes {
                self.counts[t * self.classes + p as usize] += 1;
            } else {
                self.out_of_range[t] += 1;
            }
        }
        skipped
    }

    /// Adds another matrix of the same shape.
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        assert_eq!(self.classes, other.classes);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        for (a, b) in self.out_of_range.iter_mut().zip(&other.out_of_range) {
            *a += b;
        }
    }

    /// Ground-truth pixels of class `c` (row sum, out-of-range predictions included).
    pub fn truth(&self, c: usize) -> u64 {
        self.counts[c * self.classes..(c + 1) * self.classes]
            .iter()
            .sum::<u64>()
            + self.out_of_range[c]
    }

    /// Pixels predicted as class `c` (column sum).
    pub fn predicted(&self, c: usize) -> u64 {
        (0..self.classes).map(|t| self.get(t, c)).sum()
    }

    /// All counted pixels.
    pub fn total(&self) -> u64 {
        (0..self.classes).map(|c| self.truth(c)).sum()
    }

    fn ratio(num: u64, den: u64) -> Option<f64> {
        (den > 0).then(|| num as f64 / den as f64)
    }

    /// Intersection over union of each class; `None` for a class that appears
    /// neither in the ground truth nor in the predictions.
    pub fn iou(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| {
                let tp = self.get(c, c);
                Self::ratio(tp, self.truth(c) + self.predicted(c) - tp)
            })
            .collect()
    }

    /// Mean of the defined per-class IoUs.
    pub fn mean_iou(&self) -> f64 {
        mean(&self.iou())
    }

    /// Correct pixels over all pixels.
    pub fn pixel_accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|c| self.get(c, c)).sum();
        Self::ratio(correct, self.total()).unwrap_or(0.0)
    }

    /// Recall of each class (the per-class accuracy of the SegNet papers).
    pub fn recall(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| Self::ratio(self.get(c, c), self.truth(c)))
            .collect()
    }

    /// Mean of the per-class accuracies over classes present in the ground truth.
    pub fn class_accuracy(&self) -> f64 {
        mean(&self.recall())
    }

    /// Precision of each class.
    pub fn precision(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| Self::ratio(self.get(c, c), self.predicted(c)))
            .collect()
    }

    /// Dice coefficient (F1) of each class.
    pub fn dice(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| Self::ratio(2 * self.get(c, c), self.truth(c) + self.predicted(c)))
            .collect()
    }

    /// Mean of the defined per-class Dice coefficients.
    pub fn mean_dice(&self) -> f64 {
        mean(&self.dice())
    }
}

fn mean(values: &[Option<f64>]) -> f64 {
    let defined: Vec<f64> = values.iter().flatten().copied().collect();
    if defined.is_empty() {
        0.0
    } else {
        defined.iter().sum::<f64>() / defined.len() as f64
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Straightforward reference: count sets of pixels directly.
    fn reference_iou(truth: &[u8], pred: &[u8], classes: usize, ignore: u8) -> Vec<Option<f64>> {
        (0..classes as u8)
            .map(|c| {
                let valid = truth.iter().zip(pred).filter(|(t, _)| **t != ignore);
                let (mut inter, mut union) = (0u64, 0u64);
                for (&t, &p) in valid {
                    inter += (t == c && p == c) as u64;
                    union += (t == c || p == c) as u64;
                }
                (union > 0).then(|| inter as f64 / union as f64)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn matches_reference(pairs in proptest::collection::vec((0u8..6, 0u8..5), 1..400)) {
            let (truth, pred): (Vec<u8>, Vec<u8>) = pairs.into_iter().unzip();
            let mut m = ConfusionMatrix::new(5, Some(5));
            m.add(&truth, &pred);
            let iou = m.iou();
            let reference = reference_iou(&truth, &pred, 5, 5);
            for (a, b) in iou.iter().zip(&reference) {
                match (a, b) {
                    (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12),
                    (a, b) => prop_assert_eq!(a, b),
                }
            }
            let valid: Vec<_> = truth.iter().zip(&pred).filter(|(t, _)| **t != 5).collect();
            let correct = valid.iter().filter(|(t, p)| t == p).count();
            if !valid.is_empty() {
                prop_assert!((m.pixel_accuracy() - correct as f64 / valid.len() as f64).abs() < 1e-12);
            }
            for c in 0..5u8 {
                let tp = valid.iter().filter(|(t, p)| **t == c && **p == c).count() as f64;
                let t = valid.iter().filter(|(t, _)| **t == c).count() as f64;
                let p = valid.iter().filter(|(_, p)| **p == c).count() as f64;
                let dice = m.dice()[c as usize];
                prop_assert_eq!(dice.is_some(), t + p > 0.0);
                if let Some(d) = dice { prop_assert!((d - 2.0 * tp / (t + p)).abs() < 1e-12); }
                if let Some(r) = m.recall()[c as usize] { prop_assert!((r - tp / t).abs() < 1e-12); }
                if let Some(q) = m.precision()[c as usize] { prop_assert!((q - tp / p).abs() < 1e-12); }
            }
        }
    }

    #[test]
    fn hand_computed_case() {
        // truth: 0 0 1 1 void ; pred: 0 1 1 1 0
        let mut m = ConfusionMatrix::new(2, Some(11));
        m.add(&[0, 0, 1, 1, 11], &[0, 1, 1, 1, 0]);
        assert_eq!(m.rows(), vec![vec![1, 1], vec![0, 2]]);
        assert_eq!(m.iou(), vec![Some(0.5), Some(2.0 / 3.0)]);
        assert!((m.mean_iou() - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(m.pixel_accuracy(), 0.75);
        assert_eq!(m.class_accuracy(), 0.75);
        assert_eq!(m.dice(), vec![Some(2.0 / 3.0), Some(0.8)]);
        // Bad labels are reported, not counted.
        assert_eq!(m.add(&[7], &[0]), 1);
        assert_eq!(m.total(), 4);
    }
}
