//! Post-processing of model output, into buffers the caller owns: no allocation
//! per frame.
//!
//! Logits arrive as the model writes them: planar, `[classes, height * width]`
//! (ONNX NCHW with batch 1). Masks are one class id per pixel.

use crate::error::Error;

fn check_len(expected: usize, actual: usize) -> Result<(), Error> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::BufferSize { expected, actual })
    }
}

/// The class of highest logit at every pixel (the first one on ties, as numpy and
/// torch do), for float or int8 logits.
pub fn argmax<T: Copy + PartialOrd>(
    logits: &[T],
    classes: usize,
    mask: &mut [u8],
) -> Result<(), Error> {
    if classes == 0 || classes > 256 {
        return Err(Error::Classes { classes });
    }
    let plane = mask.len();
    check_len(classes * plane, logits.len())?;
    // Class-major sweep over blocks of pixels: each plane is read in order and
    // the running maxima stay in a small stack buffer, so the compiler can
    // vectorise the comparisons (no per-pixel gather of the current best).
    const BLOCK: usize = 256;
    if plane == 0 {
        return Ok(());
    }
    let mut best = [logits[0]; BLOCK];
    for start in (0..plane).step_by(BLOCK) {
        let len = BLOCK.min(plane - start);
        let (best, mask) = (&mut best[..len], &mut mask[start..start + len]);
        best.copy_from_slice(&logits[start..start + len]);
        mask.fill(0);
        for c in 1..classes {
            let row = &logits[c * plane + start..][..len];
            for ((b, m), &v) in best.iter_mut().zip(mask.iter_mut()).zip(row) {
                if v > *b {
                    *b = v;
                    *m = c as u8;
                }
            }
        }
    }
    Ok(())
}

/// Colours a mask with `palette` (ids beyond the palette become black).
pub fn colorize(mask: &[u8], palette: &[[u8; 3]], rgb: &mut [u8]) -> Result<(), Error> {
    check_len(3 * mask.len(), rgb.len())?;
    for (&m, px) in mask.iter().zip(rgb.chunks_exact_mut(3)) {
        px.copy_from_slice(palette.get(m as usize).unwrap_or(&[0, 0, 0]));
    }
    Ok(())
}

/// Blends the palette colour of each pixel's class over an RGB frame:
/// `out = (frame * (255 - alpha) + colour * alpha) / 255`. Pixels of class `skip`
/// (such as void) keep the frame's colour.
pub fn overlay(
    rgb: &mut [u8],
    mask: &[u8],
    palette: &[[u8; 3]],
    alpha: u8,
    skip: Option<u8>,
) -> Result<(), Error> {
    check_len(3 * mask.len(), rgb.len())?;
    let a = alpha as u16;
    for (&m, px) in mask.iter().zip(rgb.chunks_exact_mut(3)) {
        if Some(m) == skip {
            continue;
        }
        let Some(color) = palette.get(m as usize) else {
            continue;
        };
        for (p, &c) in px.iter_mut().zip(color) {
            *p = ((*p as u16 * (255 - a) + c as u16 * a + 127) / 255) as u8;
        }
    }
    Ok(())
}

/// A run of equal class ids in row-major order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Run {
    /// The class id.
    pub value: u8,
    /// How many pixels in a row have it (at least 1).
    pub len: u32,
}

/// The runs of a mask, in order, without allocating.
pub fn runs(mask: &[u8]) -> impl Iterator<Item = Run> + '_ {
    let mut i = 0;
    core::iter::from_fn(move || {
        let value = *mask.get(i)?;
        let start = i;
        while i < mask.len() && mask[i] == value {
            i += 1;
        }
        Some(Run {
            value,
            len: (i - start) as u32,
        })
    })
}

/// Writes runs back into a mask, which they must fill exactly.
pub fn decode_runs(runs: impl IntoIterator<Item = Run>, mask: &mut [u8]) -> Result<(), Error> {
    let mut i = 0usize;
    for run in runs {
        let end = i
            .checked_add(run.len as usize)
            .filter(|&e| e <= mask.len() && run.len > 0);
        let Some(end) = end else {
            return Err(Error::BadRuns {
                filled: i,
                expected: mask.len(),
            });
        };
        mask[i..end].fill(run.value);
        i = end;
    }
    if i == mask.len() {
        Ok(())
    } else {
        Err(Error::BadRuns {
            filled: i,
            expected: mask.len(),
        })
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn naive_argmax<T: Copy + PartialOrd>(logits: &[T], classes: usize, plane: usize) -> Vec<u8> {
        (0..plane)
            .map(|i| {
                let mut best = 0;
                for c in 1..classes {
                    if logits[c * plane + i] > logits[best * plane + i] {
                        best = c;
                    }
                }
                best as u8
            })
            .collect()
    }

    proptest! {
        #[test]
        fn argmax_matches_naive_f32(classes in 1usize..14, plane in 1usize..700, seed in any::<u64>()) {
            let mut rng = crate::rng::Rng::new(seed);
            // Coarse values so ties happen.
            let logits: Vec<f32> = (0..classes * plane).map(|_| (rng.below(5) as f32) - 2.0).collect();
            let mut mask = vec![0; plane];
            argmax(&logits, classes, &mut mask).unwrap();
            prop_assert_eq!(mask, naive_argmax(&logits, classes, plane));
        }

        #[test]
        fn argmax_matches_naive_i8(classes in 1usize..14, plane in 1usize..700, seed in any::<u64>()) {
            let mut rng = crate::rng::Rng::new(seed);
            let logits: Vec<i8> = (0..classes * plane).map(|_| rng.next_u64() as i8).collect();
            let mut mask = vec![0; plane];
            argmax(&logits, classes, &mut mask).unwrap();
            prop_assert_eq!(mask, naive_argmax(&logits, classes, plane));
        }

        #[test]
        fn runs_round_trip(mask in proptest::collection::vec(0u8..4, 0..300)) {
            let r: Vec<Run> = runs(&mask).collect();
            prop_assert!(r.windows(2).all(|w| w[0].value != w[1].value));
            prop_assert_eq!(r.iter().map(|r| r.len as usize).sum::<usize>(), mask.len());
            let mut back = vec![99; mask.len()];
            decode_runs(r, &mut back).unwrap();
            prop_assert_eq!(back, mask);
        }

        #[test]
        fn overlay_matches_naive(pixels in proptest::collection::vec((any::<[u8; 3]>(), 0u8..13), 1..60), alpha in any::<u8>()) {
            let mut rgb: Vec<u8> = pixels.iter().flat_map(|p| p.0).collect();
            let mask: Vec<u8> = pixels.iter().map(|p| p.1).collect();
            overlay(&mut rgb, &mask, &crate::PALETTE, alpha, Some(crate::VOID)).unwrap();
            for (k, (px, m)) in pixels.iter().enumerate() {
                for c in 0..3 {
                    let expected = if *m == crate::VOID || *m as usize >= crate::PALETTE.len() {
                        px[c]
                    } else {
                        let f = px[c] as f64 * (255 - alpha) as f64 / 255.0 + crate::PALETTE[*m as usize][c] as f64 * alpha as f64 / 255.0;
                        f.round() as u8
                    };
                    prop_assert!((rgb[3 * k + c] as i32 - expected as i32).abs() <= 1);
                }
            }
        }
    }

    #[test]
    fn bad_sizes_and_runs_are_errors() {
        let mut mask = [0u8; 4];
        assert_eq!(
            argmax(&[0.0f32; 7], 2, &mut mask),
            Err(Error::BufferSize {
                expected: 8,
                actual: 7
            })
        );
        assert_eq!(
            argmax(&[0.0f32; 0], 0, &mut mask),
            Err(Error::Classes { classes: 0 })
        );
        assert_eq!(
            colorize(&mask, &crate::PALETTE, &mut [0; 11]),
            Err(Error::BufferSize {
                expected: 12,
                actual: 11
            })
        );
        let too_long = [Run { value: 1, len: 3 }, Run { value: 2, len: 2 }];
        assert_eq!(
            decode_runs(too_long, &mut mask),
            Err(Error::BadRuns {
                filled: 3,
                expected: 4
            })
        );
        assert_eq!(
            decode_runs([Run { value: 1, len: 3 }], &mut mask),
            Err(Error::BadRuns {
                filled: 3,
                expected: 4
            })
        );
        assert_eq!(
            decode_runs([Run { value: 1, len: 0 }], &mut mask),
            Err(Error::BadRuns {
                filled: 0,
                expected: 4
            })
        );
        let mut rgb = [0u8; 12];
        colorize(&[3, 8, 11, 200], &crate::PALETTE, &mut rgb).unwrap();
        assert_eq!(&rgb[..6], &[128, 64, 128, 64, 0, 128]);
        assert_eq!(&rgb[9..], &[0, 0, 0]);
    }
}
