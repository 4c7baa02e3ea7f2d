//! Deterministic randomness for the synthetic scenes.
//!
//! A few lines of SplitMix64 rather than a crate: a dataset made from a seed must
//! stay byte-identical across dependency upgrades, and the generator must run in
//! `no_std` without an allocator.

/// SplitMix64 (Steele, Lea, Flood 2014): fast, statistically sound for this use.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from any 64-bit value.
    pub const fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851_F42D_4C95_7F2D)
    }

    /// A generator for one cell of a stateless world: same inputs, same stream.
    pub fn for_cell(seed: u64, stream: u64, index: i64) -> Self {
        Rng::new(hash3(seed, stream, index as u64))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.f32() < p
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u32) as usize]
    }
}

/// The SplitMix64 output function: a bijective 64-bit mixer.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of three words.
pub const fn hash3(a: u64, b: u64, c: u64) -> u64 {
    mix64(mix64(mix64(a) ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ c)
}

/// Hash of a lattice point to `[0, 1)`.
fn lattice(ix: i32, iy: i32, seed: u32) -> f32 {
    let h = hash3(seed as u64, ix as u32 as u64, iy as u32 as u64);
    (h >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Smooth value noise in `[0, 1)` with unit lattice spacing.
pub fn value_noise(x: f32, y: f32, seed: u32) -> f32 {
    let fx = libm::floorf(x);
    let fy = libm::floorf(y);
    let (ix, iy) = (fx as i32, fy as i32);
    let (tx, ty) = (x - fx, y - fy);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let a = lattice(ix, iy, seed);
    let b = lattice(ix + 1, iy, seed);
    let c = lattice(ix, iy + 1, seed);
    let d = lattice(ix + 1, iy + 1, seed);
    let top = a + (b - a) * sx;
    let bottom = c + (d - c) * sx;
    top + (bottom - top) * sy
}

/// Two octaves of value noise, in `[0, 1)`.
pub fn fbm(x: f32, y: f32, seed: u32) -> f32 {
    (value_noise(x, y, seed) * 2.0 + value_noise(x * 2.7, y * 2.7, seed ^ 0xA5A5)) / 3.0
}

/// Per-pixel white noise in `[0, 1)`.
pub fn pixel_noise(x: u32, y: u32, seed: u64) -> f32 {
    (hash3(seed, x as u64, y as u64) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_uniformish() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut c = Rng::new(8);
        let mut sum = 0.0;
        let mut differ = false;
        for _ in 0..10_000 {
            let x = a.f32();
            assert_eq!(x, b.f32());
            assert!((0.0..1.0).contains(&x));
            differ |= x != c.f32();
            sum += x;
        }
        assert!(differ);
        assert!(
            (sum / 10_000.0 - 0.5).abs() < 0.02,
            "mean {}",
            sum / 10_000.0
        );
        for _ in 0..1000 {
            assert!(a.below(5) < 5);
        }
    }

    #[test]
    fn value_noise_is_continuous_and_bounded() {
        for i in 0..1000 {
            let x = i as f32 * 0.013;
            let n = value_noise(x, 0.5 * x, 3);
            assert!((0.0..1.0).contains(&n));
            let m = value_noise(x + 1e-4, 0.5 * x, 3);
            assert!((n - m).abs() < 1e-2);
        }
    }
}
