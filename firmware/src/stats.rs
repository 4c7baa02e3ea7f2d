//! Per-class pixel statistics of label masks.

/// Counts of each label value 0..=11 (void last) in a mask.
///
/// Values above void are counted in the last slot of the returned `extra` field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Pixels per class id, void included at index 11.
    pub counts: [u64; crate::NUM_CLASSES + 1],
    /// Pixels whose value is not a class id at all.
    pub invalid: u64,
}

impl Histogram {
    /// Counts the label values of `mask`.
    pub fn of(mask: &[u8]) -> Histogram {
        let mut h = Histogram::default();
        h.add(mask);
        h
    }

    /// Adds the label values of `mask`.
    pub fn add(&mut self, mask: &[u8]) {
        for &v in mask {
            match self.counts.get_mut(v as usize) {
                Some(c) => *c += 1,
                None => self.invalid += 1,
            }
        }
    }

    /// All pixels counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.invalid
    }

    /// Fraction of pixels of each class id (void included).
    pub fn fractions(&self) -> [f32; crate::NUM_CLASSES + 1] {
        let total = self.total().max(1) as f32;
        self.counts.map(|c| c as f32 / total)
    }
}
