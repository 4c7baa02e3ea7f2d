//! Writes synthetic road scenes as a dataset in the CamVid layout.
//!
//! `train/` and `val/` hold RGB PNGs, `trainannot/` and `valannot/` 8-bit PNGs of
//! class ids with the same file names, exactly as the CamVid loaders expect, so
//! synthetic and real data go through the same code. `synth.json` records how the
//! set was made.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use firmware::Size;
use firmware::rng::hash3;
use firmware::stats::Histogram;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::io;

/// What to generate.
#[derive(Clone, Debug, Serialize)]
pub struct SynthSpec {
    /// Images in `train/`.
    pub train: usize,
    /// Images in `val/`.
    pub val: usize,
    /// Size of every image.
    pub size: Size,
    /// Base seed: the same seed gives byte-identical files.
    pub seed: u64,
}

/// What was written.
#[derive(Clone, Debug, Serialize)]
pub struct SynthSummary {
    /// The request.
    pub spec: SynthSpec,
    /// Class names by id, void last.
    pub classes: Vec<String>,
    /// Fraction of training pixels per class id (void last).
    pub train_fractions: Vec<f32>,
}

/// The seed of image `index` of a split; splits never share a scene.
pub fn scene_seed(seed: u64, split: &str, index: usize) -> u64 {
    let split_id = if split == "train" { 0 } else { 1 };
    hash3(seed, split_id, index as u64)
}

fn write_split(
    out: &Path,
    split: &str,
    count: usize,
    spec: &SynthSpec,
    on_image: &(dyn Fn() + Sync),
) -> Result<Histogram> {
    let images = out.join(split);
    let labels = out.join(format!("{split}annot"));
    for dir in [&images, &labels] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count.max(1));
    let (w, h) = (spec.size.width, spec.size.height);
    let results: Vec<Result<Histogram>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut rgb = vec![0; 3 * spec.size.area()];
                    let mut mask = vec![0; spec.size.area()];
                    let mut hist = Histogram::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(hist);
                        }
                        let seed = scene_seed(spec.seed, split, i);
                        firmware::synth::render_scene(
                            seed, w as usize, h as usize, &mut rgb, &mut mask,
                        )?;
                        let name = format!("synth_{i:06}.png");
                        io::write_rgb_png(&images.join(&name), w, h, &rgb)?;
                        io::write_gray_png(&labels.join(&name), w, h, &mask)?;
                        hist.add(&mask);
                        on_image();
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("synth worker panicked"))
            .collect()
    });
    let mut total = Histogram::default();
    for r in results {
        let h = r?;
        for (t, c) in total.counts.iter_mut().zip(h.counts) {
            *t += c;
        }
    }
    Ok(total)
}

/// Generates the dataset under `out`, calling `on_image` after each image written.
pub fn write_dataset(
    out: &Path,
    spec: &SynthSpec,
    on_image: &(dyn Fn() + Sync),
) -> Result<SynthSummary> {
    if spec.train == 0 {
        return Err(Error::Invalid(
            "--train must be at least 1: a dataset needs training images".into(),
        ));
    }
    let hist = write_split(out, "train", spec.train, spec, on_image)?;
    write_split(out, "val", spec.val, spec, on_image)?;
    let summary = SynthSummary {
        spec: spec.clone(),
        classes: firmware::CLASS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        train_fractions: hist.fractions().to_vec(),
    };
    let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    io::write_atomic(&out.join("synth.json"), &json)?;
    Ok(summary)
}

/// The image and label file of image `index` in `split`.
pub fn paths(out: &Path, split: &str, index: usize) -> (PathBuf, PathBuf) {
    let name = format!("synth_{index:06}.png");
    (
        out.join(split).join(&name),
        out.join(format!("{split}annot")).join(name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_camvid_layout_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SynthSpec {
            train: 3,
            val: 2,
            size: Size::new(64, 48),
            seed: 9,
        };
        let count = AtomicUsize::new(0);
        let summary = write_dataset(dir.path(), &spec, &|| {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 5);
        assert_eq!(summary.classes.len(), 12);
        for (split, n) in [("train", 3), ("val", 2)] {
            for i in 0..n {
                let (img, lab) = paths(dir.path(), split, i);
                let img = image::open(&img).unwrap().into_rgb8();
                let lab = image::open(&lab).unwrap().into_luma8();
                assert_eq!(img.dimensions(), (64, 48));
                assert_eq!(lab.dimensions(), (64, 48));
                // The files hold exactly what the generator makes for that seed.
                let mut rgb = vec![0; 3 * 64 * 48];
                let mut mask = vec![0; 64 * 48];
                firmware::synth::render_scene(scene_seed(9, split, i), 64, 48, &mut rgb, &mut mask)
                    .unwrap();
                assert_eq!(img.into_raw(), rgb);
                assert_eq!(lab.into_raw(), mask);
            }
        }
        assert!(dir.path().join("synth.json").is_file());
        assert_ne!(scene_seed(9, "train", 0), scene_seed(9, "val", 0));
    }

    #[test]
    fn zero_training_images_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SynthSpec {
            train: 0,
            val: 2,
            size: Size::new(8, 8),
            seed: 0,
        };
        let err = write_dataset(dir.path(), &spec, &|| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("--train"), "{err}");
    }
}
