//! Datasets: where samples come from, how they are augmented, and batches built in
//! worker threads.
//!
//! A [`Source`] is either a folder in the CamVid layout (`train/` + `trainannot/`,
//! `val/` + `valannot/`, labels as 8-bit class ids with 11 = void) or the built-in
//! synthetic road scenes, rendered in memory on demand. Both yield the same
//! [`Sample`]s, so training and evaluation never care which.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, mpsc};

use firmware::Size;
use firmware::rng::{Rng, hash3};
use image::{GrayImage, RgbImage, imageops};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::labels::{LabelSpace, MaskFormat, decode_mask, read_class_dict};

/// One image and its class-id mask, at the same size.
#[derive(Clone, Debug)]
pub struct Sample {
    /// RGB pixels.
    pub image: RgbImage,
    /// One class id per pixel (void = 11).
    pub mask: GrayImage,
}

/// Image and label files of one split.
#[derive(Clone, Debug)]
pub struct FileSplit {
    /// (image, label) pairs in file-name order.
    pub pairs: Vec<(PathBuf, PathBuf)>,
    /// How the label files encode classes.
    pub format: MaskFormat,
    /// The classes.
    pub labels: LabelSpace,
}

fn list_images(dir: &Path, hint: &str) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Split {
        dir: dir.to_owned(),
        what: format!("cannot read the folder ({e}); {hint}"),
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if firmware::source::is_image_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Matches each image with the label of the same name (or stem + `.png`) in `labels`.
fn pair_by_name(images: Vec<PathBuf>, labels: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    images
        .into_iter()
        .map(|image| {
            let name = image.file_name().expect("listed files have names");
            let same = labels.join(name);
            let png = labels.join(Path::new(name).with_extension("png"));
            match (same.is_file(), png.is_file()) {
                (true, _) => Ok((image, same)),
                (false, true) => Ok((image, png)),
                (false, false) => Err(Error::MissingMask {
                    image,
                    expected: same,
                }),
            }
        })
        .collect()
}

/// Whether a grey label file holds only 0 and 255 (a binary mask).
fn is_binary_mask(path: &Path) -> Result<bool> {
    let img = image::open(path).map_err(|source| Error::Image {
        path: path.to_owned(),
        source,
    })?;
    Ok(match img {
        image::DynamicImage::ImageLuma8(l) => l.as_raw().iter().all(|&v| v == 0 || v == 255),
        _ => false,
    })
}

impl FileSplit {
    /// Opens split `split` of the dataset at `root`, recognising its layout:
    ///
    /// - Cityscapes: `leftImg8bit/{split}/CITY/*_leftImg8bit.png` with
    ///   `gtFine/{split}/CITY/*_gtFine_labelIds.png`;
    /// - CamVid: `{split}/` with labels of the same name in `{split}annot/`;
    /// - a plain folder: `images/` and `masks/` with the same stems, split into
    ///   train and val by `val_fraction` with `seed`.
    ///
    /// A `class_dict.csv` (`name,r,g,b`) at the root names the classes and lets
    /// masks be stored as colours; grey masks holding only 0 and 255 are binary.
    /// Otherwise the classes are CamVid's.
    pub fn open(root: &Path, split: &str, val_fraction: f32, seed: u64) -> Result<FileSplit> {
        if !root.is_dir() {
            return Err(Error::Split {
                dir: root.to_owned(),
                what: "dataset folder does not exist".into(),
            });
        }
        if root.join("leftImg8bit").is_dir() {
            return Self::cityscapes(root, split);
        }
        let class_dict = root.join("class_dict.csv");
        let labels = if class_dict.is_file() {
            Some(read_class_dict(&class_dict)?)
        } else {
            None
        };
        let pairs = if root.join(split).is_dir() || !root.join("images").is_dir() {
            Self::camvid(root, split)?.pairs
        } else {
            let images = list_images(
                &root.join("images"),
                "a plain dataset folder has images/ and masks/",
            )?;
            let masks = root.join("masks");
            if !masks.is_dir() {
                return Err(Error::Split {
                    dir: masks,
                    what: "mask folder is missing".into(),
                });
            }
            let all = pair_by_name(images, &masks)?;
            let want_val = split != "train";
            let chosen: Vec<_> = all
                .into_iter()
                .filter(|(image, _)| {
                    let name = image
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let h = name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
                        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
                    });
                    let u = (hash3(h, seed, 0) >> 40) as f32 / (1u64 << 24) as f32;
                    (u < val_fraction) == want_val
                })
                .collect();
            if chosen.is_empty() {
                return Err(Error::Split {
                    dir: root.to_owned(),
                    what: format!("the {split} split is empty with --val-fraction {val_fraction}"),
                });
            }
            chosen
        };
        let (format, labels) = match labels {
            Some(l) => (MaskFormat::Ids, l),
            None if is_binary_mask(&pairs[0].1)? => (MaskFormat::Binary, LabelSpace::binary()),
            None => (MaskFormat::Ids, LabelSpace::camvid()),
        };
        Ok(FileSplit {
            pairs,
            format,
            labels,
        })
    }

    /// Every labelled frame of the dataset at `root`: its `train` and `val`
    /// splits together (a plain `images/` + `masks/` folder whole).
    pub fn pooled(root: &Path) -> Result<FileSplit> {
        let mut pool = FileSplit::open(root, "train", 0.0, 0)?;
        if let Ok(val) = FileSplit::open(root, "val", 0.0, 0) {
            pool.pairs.extend(val.pairs);
        }
        Ok(pool)
    }

    /// Split `split` of the dataset at `root` pooled over its `train` and
    /// `val` splits and cut by sequence: `val` is every frame whose file name
    /// starts with one of `held_out`, `train` every other frame.
    pub fn by_sequence(root: &Path, split: &str, held_out: &[String]) -> Result<FileSplit> {
        let mut pool = FileSplit::pooled(root)?;
        let want_val = split != "train";
        let held = |image: &Path| {
            let name = image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            held_out.iter().any(|p| name.starts_with(p.as_str()))
        };
        let all: Vec<String> = sequences(pool.pairs.iter().map(|(i, _)| i.as_path()))
            .into_iter()
            .map(|(s, n)| format!("{s} ({n})"))
            .collect();
        for prefix in held_out {
            let found = pool.pairs.iter().any(|(image, _)| {
                image
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix.as_str()))
            });
            if !found {
                return Err(Error::Split {
                    dir: root.to_owned(),
                    what: format!(
                        "--val-sequence {prefix}: no frame's name starts with it; the sequences here are {}",
                        all.join(", ")
                    ),
                });
            }
        }
        pool.pairs.retain(|(image, _)| held(image) == want_val);
        if pool.pairs.is_empty() {
            return Err(Error::Split {
                dir: root.to_owned(),
                what: format!(
                    "holding out {} leaves no frame to train on; the sequences here are {}",
                    held_out.join(", "),
                    all.join(", ")
                ),
            });
        }
        Ok(pool)
    }

    /// The CamVid layout only: `root/split` and `root/{split}annot`.
    pub fn camvid(root: &Path, split: &str) -> Result<FileSplit> {
        let images = list_images(
            &root.join(split),
            &format!("the CamVid layout has {split}/ and {split}annot/"),
        )?;
        if images.is_empty() {
            return Err(Error::Split {
                dir: root.join(split),
                what: "holds no images".into(),
            });
        }
        let annot = root.join(format!("{split}annot"));
        if !annot.is_dir() {
            return Err(Error::Split {
                dir: annot,
                what: "label folder is missing".into(),
            });
        }
        Ok(FileSplit {
            pairs: pair_by_name(images, &annot)?,
            format: MaskFormat::Ids,
            labels: LabelSpace::camvid(),
        })
    }

    fn cityscapes(root: &Path, split: &str) -> Result<FileSplit> {
        let images_root = root.join("leftImg8bit").join(split);
        let cities = std::fs::read_dir(&images_root).map_err(|e| Error::Split {
            dir: images_root.clone(),
            what: format!("cannot read the split folder ({e})"),
        })?;
        let mut cities: Vec<PathBuf> = cities
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        cities.sort();
        let mut pairs = Vec::new();
        for city in cities {
            for image in list_images(&city, "Cityscapes cities hold *_leftImg8bit.png")? {
                let name = image
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let Some(prefix) = name.strip_suffix("_leftImg8bit.png") else {
                    continue;
                };
                let city_name = city.file_name().unwrap_or_default();
                let mask = root
                    .join("gtFine")
                    .join(split)
                    .join(city_name)
                    .join(format!("{prefix}_gtFine_labelIds.png"));
                if !mask.is_file() {
                    return Err(Error::MissingMask {
                        image,
                        expected: mask,
                    });
                }
                pairs.push((image, mask));
            }
        }
        if pairs.is_empty() {
            return Err(Error::Split {
                dir: images_root,
                what: "holds no *_leftImg8bit.png images".into(),
            });
        }
        Ok(FileSplit {
            pairs,
            format: MaskFormat::CityscapesLabelIds,
            labels: LabelSpace::cityscapes(),
        })
    }
}

/// The sequences (drives, cities) of `images` with their frame counts, by
/// the file name up to its first `_` (CamVid's `0016E5_07959.png`,
/// Cityscapes' `aachen_000000_000019_leftImg8bit.png`), sorted.
pub fn sequences<'a>(images: impl Iterator<Item = &'a Path>) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for image in images {
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sequence = name.split('_').next().unwrap_or("").to_string();
        *counts.entry(sequence).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// Reads one image and its label file, maps the labels to class ids as `format`
/// says, and checks that they fit together and that every label is a class of
/// `labels` or void.
pub fn load_pair(
    image: &Path,
    mask: &Path,
    labels: &LabelSpace,
    format: &MaskFormat,
) -> Result<Sample> {
    let img = image::open(image).map_err(|source| Error::Image {
        path: image.to_owned(),
        source,
    })?;
    let ids = read_mask((img.width(), img.height()), mask, labels, format)?;
    Ok(Sample {
        image: img.into_rgb8(),
        mask: ids,
    })
}

/// Checks an image and its label file as [`load_pair`] would, without
/// decoding the image (its header gives its size): what a run validates
/// before it writes anything.
pub fn check_pair(
    image: &Path,
    mask: &Path,
    labels: &LabelSpace,
    format: &MaskFormat,
) -> Result<()> {
    let dims = image::image_dimensions(image).map_err(|source| Error::Image {
        path: image.to_owned(),
        source,
    })?;
    read_mask(dims, mask, labels, format).map(|_| ())
}

/// Reads the label file `mask` of `image` (of size `dims`) as class ids.
fn read_mask(
    dims: (u32, u32),
    mask: &Path,
    labels: &LabelSpace,
    format: &MaskFormat,
) -> Result<GrayImage> {
    let bytes = std::fs::read(mask).map_err(|e| Error::io(mask, e))?;
    let ids = decode_mask(&bytes, dims, labels, *format).map_err(|source| Error::Labels {
        path: mask.to_owned(),
        source,
    })?;
    Ok(GrayImage::from_raw(dims.0, dims.1, ids).expect("one id per pixel"))
}

/// Where samples come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Files on disk.
    Files(FileSplit),
    /// Synthetic road scenes rendered on demand: `count` scenes of `size` from `seed`.
    Synthetic {
        /// Number of scenes.
        count: usize,
        /// Rendered size.
        size: Size,
        /// Base seed; scene `i` uses `hash(seed, i)`.
        seed: u64,
        /// Scenes kept after their first rendering, shared by clones; empty
        /// when they would take more than [`SCENE_CACHE_BYTES`].
        rendered: Arc<[OnceLock<Sample>]>,
    },
}

/// Most memory the rendered synthetic scenes of one split may keep.
pub const SCENE_CACHE_BYTES: usize = 1 << 30;

/// Which data a run reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Dataset folder; `None` for synthetic scenes.
    pub root: Option<PathBuf>,
    /// Share of a plain folder (no split sub-folders) held out for validation.
    pub val_fraction: f32,
    /// Synthetic training scenes.
    pub synthetic_train: usize,
    /// Synthetic validation scenes.
    pub synthetic_val: usize,
    /// Seed of the split and of the synthetic scenes.
    pub seed: u64,
    /// Drives (or cities) held out for validation, by file-name prefix
    /// (`0006R0`, `aachen`): when given, every labelled split of the dataset
    /// is pooled, the frames whose names start with one of these validate,
    /// and all the others train, so the validation figure is on streets the
    /// model never saw. Empty: the dataset's own train and val splits.
    #[serde(default)]
    pub val_sequences: Vec<String>,
    /// Train on the dataset's train and val splits pooled: the final training
    /// of a recipe chosen on held-out drives. Validation still runs on the
    /// val split, which the model has then seen, so its figures say nothing
    /// about unseen streets.
    #[serde(default)]
    pub train_on_val: bool,
}

impl Source {
    /// Split `split` of the data `spec` describes; synthetic scenes render at `size`.
    pub fn open(spec: &DataSpec, split: &str, size: Size) -> Result<Source> {
        match &spec.root {
            Some(_) if spec.train_on_val && !spec.val_sequences.is_empty() => {
                Err(Error::Invalid(
                    "--train-on-val trains on every frame, so no drive would be held out by --val-sequence; give one or the other".into(),
                ))
            }
            Some(root) if !spec.val_sequences.is_empty() => Ok(Source::Files(
                FileSplit::by_sequence(root, split, &spec.val_sequences)?,
            )),
            Some(root) if spec.train_on_val && split == "train" => {
                Ok(Source::Files(FileSplit::pooled(root)?))
            }
            None if spec.train_on_val => Err(Error::Invalid(
                "--train-on-val pools a dataset's train and val splits: it needs --data".into(),
            )),
            Some(root) => Ok(Source::Files(FileSplit::open(
                root,
                split,
                spec.val_fraction,
                spec.seed,
            )?)),
            None => Ok(Source::synthetic(
                if split == "train" {
                    spec.synthetic_train
                } else {
                    spec.synthetic_val
                },
                size,
                hash3(spec.seed, if split == "train" { 0 } else { 1 }, 0x5EED),
            )),
        }
    }

    /// `count` synthetic scenes of `size` from `seed`, each rendered once and
    /// then kept in memory (up to [`SCENE_CACHE_BYTES`] for all of them).
    pub fn synthetic(count: usize, size: Size, seed: u64) -> Source {
        let keep = count.saturating_mul(4 * size.area()) <= SCENE_CACHE_BYTES;
        Source::Synthetic {
            count,
            size,
            seed,
            rendered: (0..if keep { count } else { 0 })
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The classes of the samples.
    pub fn labels(&self) -> LabelSpace {
        match self {
            Source::Files(f) => f.labels.clone(),
            Source::Synthetic { .. } => LabelSpace::camvid(),
        }
    }

    /// The sequences of the samples with their frame counts (see
    /// [`sequences`]); empty for synthetic scenes.
    pub fn sequences(&self) -> Vec<(String, usize)> {
        match self {
            Source::Files(f) => sequences(f.pairs.iter().map(|(i, _)| i.as_path())),
            Source::Synthetic { .. } => Vec::new(),
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Source::Files(f) => f.pairs.len(),
            Source::Synthetic { count, .. } => *count,
        }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short name of sample `i` (its file name, or `synth_i`).
    pub fn name(&self, i: usize) -> String {
        match self {
            Source::Files(f) => f.pairs[i]
                .0
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            Source::Synthetic { .. } => format!("synth_{i:06}.png"),
        }
    }

    /// Checks every sample's files as loading would (images by their header,
    /// labels decoded and checked against the classes), on `workers` threads:
    /// the first problem found, naming its file. Synthetic scenes always pass.
    pub fn check(&self, workers: usize) -> Result<()> {
        let Source::Files(f) = self else {
            return Ok(());
        };
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let work = || -> Result<()> {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= f.pairs.len() || failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                let (image, mask) = &f.pairs[i];
                check_pair(image, mask, &f.labels, &f.format)
                    .inspect_err(|_| failed.store(true, std::sync::atomic::Ordering::Relaxed))?;
            }
        };
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..workers.max(1)).map(|_| scope.spawn(work)).collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("label check thread"))
                .collect::<Result<Vec<()>>>()
        })
        .map(|_| ())
    }

    /// Loads sample `i` at its own resolution.
    pub fn load(&self, i: usize) -> Result<Sample> {
        match self {
            Source::Files(f) => {
                let (image, mask) = &f.pairs[i];
                load_pair(image, mask, &f.labels, &f.format)
            }
            Source::Synthetic {
                size,
                seed,
                rendered,
                ..
            } => {
                if let Some(sample) = rendered.get(i).and_then(OnceLock::get) {
                    return Ok(sample.clone());
                }
                let mut rgb = vec![0; 3 * size.area()];
                let mut mask = vec![0; size.area()];
                let (w, h) = (size.width as usize, size.height as usize);
                firmware::synth::render_scene(
                    hash3(*seed, i as u64, 0),
                    w,
                    h,
                    &mut rgb,
                    &mut mask,
                )?;
                let sample = Sample {
                    image: RgbImage::from_raw(size.width, size.height, rgb).expect("buffer fits"),
                    mask: GrayImage::from_raw(size.width, size.height, mask).expect("buffer fits"),
                };
                if let Some(cell) = rendered.get(i) {
                    // Another thread may have rendered it meanwhile: same pixels.
                    let _ = cell.set(sample.clone());
                }
                Ok(sample)
            }
        }
    }
}

/// Joint augmentation of image and mask; each part can be switched off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Mirror left-right with probability 0.5.
    pub flip: bool,
    /// Scale up by a random factor in `[1, max_scale]` and crop back to size
    /// (with `min_scale` below 1: in `[min_scale, max_scale]`, see there).
    pub max_scale: f32,
    /// Below 1, zoom by a factor drawn log-uniformly in `[min_scale,
    /// max_scale]` relative to the whole picture at the training size, taken
    /// from the source picture itself: a zoom above 1 resizes a window of the
    /// source (keeping its full detail), one below 1 shrinks the whole
    /// picture onto a void canvas at a random place, as a wider lens or a
    /// higher camera would show the street. 1 keeps the zoom-in-only
    /// behaviour above (runs from before this field).
    #[serde(default = "one")]
    pub min_scale: f32,
    /// Per-channel gains drawn in `[1 - w, 1 + w]`: white balance differing
    /// between cameras. 0 switches it off.
    #[serde(default)]
    pub white_balance: f32,
    /// Rotate by up to this many degrees (mask: nearest neighbour, corners void).
    pub rotate_degrees: f32,
    /// Random brightness, contrast and saturation change of up to this fraction.
    pub color_jitter: f32,
    /// Gaussian-like pixel noise of up to this standard deviation (0..255 scale).
    pub noise: f32,
    /// Blur with a random sigma up to this, with probability 0.3.
    pub blur: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            flip: true,
            max_scale: 1.5,
            min_scale: 1.0,
            white_balance: 0.0,
            rotate_degrees: 5.0,
            color_jitter: 0.25,
            noise: 4.0,
            blur: 1.0,
        }
    }
}

impl Augment {
    /// No augmentation at all.
    pub fn none() -> Augment {
        Augment {
            flip: false,
            max_scale: 1.0,
            min_scale: 1.0,
            white_balance: 0.0,
            rotate_degrees: 0.0,
            color_jitter: 0.0,
            noise: 0.0,
            blur: 0.0,
        }
    }
}

fn one() -> f32 {
    1.0
}

/// A random view of `sample` at `size`, zoomed by a factor drawn
/// log-uniformly in `[min_scale, max_scale]` relative to the whole picture
/// resized to `size`. Above 1, a window of the source picture is resized to
/// `size` (so the zoom keeps the source's detail); below 1, the whole picture
/// is shrunk and placed at a random spot of a `void` (black) canvas.
pub fn scaled_view(
    sample: &Sample,
    size: Size,
    (min_scale, max_scale): (f32, f32),
    void: u8,
    rng: &mut Rng,
) -> Sample {
    let scale = rng
        .range(min_scale.ln(), max_scale.max(min_scale).ln())
        .exp();
    let (w, h) = sample.image.dimensions();
    if scale >= 1.0 {
        let (cw, ch) = (
            ((w as f32 / scale).round() as u32).clamp(1, w),
            ((h as f32 / scale).round() as u32).clamp(1, h),
        );
        let (x0, y0) = (rng.below(w - cw + 1), rng.below(h - ch + 1));
        let window = Sample {
            image: imageops::crop_imm(&sample.image, x0, y0, cw, ch).to_image(),
            mask: imageops::crop_imm(&sample.mask, x0, y0, cw, ch).to_image(),
        };
        return resize(&window, size);
    }
    let inner = Size::new(
        ((size.width as f32 * scale).round() as u32).clamp(1, size.width),
        ((size.height as f32 * scale).round() as u32).clamp(1, size.height),
    );
    let shrunk = resize(sample, inner);
    let (x0, y0) = (
        rng.below(size.width - inner.width + 1),
        rng.below(size.height - inner.height + 1),
    );
    let mut image = RgbImage::new(size.width, size.height);
    let mut mask = GrayImage::from_pixel(size.width, size.height, image::Luma([void]));
    imageops::replace(&mut image, &shrunk.image, x0 as i64, y0 as i64);
    imageops::replace(&mut mask, &shrunk.mask, x0 as i64, y0 as i64);
    Sample { image, mask }
}

/// Resizes a sample to `size`: bilinear for the image, nearest for the mask.
pub fn resize(sample: &Sample, size: Size) -> Sample {
    if sample.image.dimensions() == (size.width, size.height) {
        return sample.clone();
    }
    Sample {
        image: imageops::resize(
            &sample.image,
            size.width,
            size.height,
            imageops::FilterType::Triangle,
        ),
        mask: imageops::resize(
            &sample.mask,
            size.width,
            size.height,
            imageops::FilterType::Nearest,
        ),
    }
}

/// A window of `size` at a random place in `sample` (the whole sample where it
/// is not larger); image and mask are cut at the same place.
pub fn random_crop(sample: &Sample, size: Size, rng: &mut Rng) -> Sample {
    let (w, h) = sample.image.dimensions();
    let (cw, ch) = (size.width.min(w), size.height.min(h));
    let (x0, y0) = (rng.below(w - cw + 1), rng.below(h - ch + 1));
    Sample {
        image: imageops::crop_imm(&sample.image, x0, y0, cw, ch).to_image(),
        mask: imageops::crop_imm(&sample.mask, x0, y0, cw, ch).to_image(),
    }
}

/// Applies `aug` to a sample already at the training size, with randomness from `rng`.
pub fn augment(sample: Sample, aug: &Augment, void: u8, rng: &mut Rng) -> Sample {
    let Sample {
        mut image,
        mut mask,
    } = sample;
    let (w, h) = image.dimensions();
    // With `min_scale` below 1 the zoom was taken from the source (`scaled_view`).
    if aug.max_scale > 1.0 && aug.min_scale >= 1.0 {
        let s = rng.range(1.0, aug.max_scale);
        let (sw, sh) = (((w as f32) * s) as u32, ((h as f32) * s) as u32);
        if sw > w && sh > h {
            let (x0, y0) = (rng.below(sw - w + 1), rng.below(sh - h + 1));
            image = imageops::crop_imm(
                &imageops::resize(&image, sw, sh, imageops::FilterType::Triangle),
                x0,
                y0,
                w,
                h,
            )
            .to_image();
            mask = imageops::crop_imm(
                &imageops::resize(&mask, sw, sh, imageops::FilterType::Nearest),
                x0,
                y0,
                w,
                h,
            )
            .to_image();
        }
    }
    if aug.rotate_degrees > 0.0 {
        let angle = rng
            .range(-aug.rotate_degrees, aug.rotate_degrees)
            .to_radians();
        (image, mask) = rotate(&image, &mask, angle, void);
    }
    if aug.flip && rng.chance(0.5) {
        imageops::flip_horizontal_in_place(&mut image);
        imageops::flip_horizontal_in_place(&mut mask);
    }
    if aug.blur > 0.0 && rng.chance(0.3) {
        image = imageops::blur(&image, rng.range(0.3, aug.blur.max(0.31)));
    }
    if aug.color_jitter > 0.0 || aug.noise > 0.0 || aug.white_balance > 0.0 {
        let j = aug.color_jitter;
        let brightness = rng.range(1.0 - j, 1.0 + j);
        let contrast = rng.range(1.0 - j, 1.0 + j);
        let saturation = rng.range(1.0 - j, 1.0 + j);
        let noise = rng.range(0.0, aug.noise);
        let wb = aug.white_balance;
        let gains = if wb > 0.0 {
            [(); 3].map(|_| rng.range(1.0 - wb, 1.0 + wb))
        } else {
            [1.0; 3]
        };
        let mean = image.as_raw().iter().map(|&v| v as f32).sum::<f32>()
            / image.as_raw().len().max(1) as f32;
        for (i, px) in image.pixels_mut().enumerate() {
            let grey = 0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32;
            for c in 0..3 {
                let v = grey + (px[c] as f32 - grey) * saturation;
                let v = (v - mean) * contrast + mean;
                let n = (firmware::rng::pixel_noise(i as u32, c as u32, rng.next_u64() & 0xFF)
                    - 0.5)
                    * 3.4
                    * noise;
                px[c] = (v * brightness * gains[c] + n).clamp(0.0, 255.0) as u8;
            }
        }
    }
    Sample { image, mask }
}

/// Rotates image (bilinear) and mask (nearest) about the centre; uncovered mask
/// pixels become void and uncovered image pixels black.
fn rotate(image: &RgbImage, mask: &GrayImage, angle: f32, void: u8) -> (RgbImage, GrayImage) {
    let (w, h) = image.dimensions();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (sin, cos) = angle.sin_cos();
    let mut out_img = RgbImage::new(w, h);
    let mut out_mask = GrayImage::from_pixel(w, h, image::Luma([void]));
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let (sx, sy) = (
                cos * dx + sin * dy + cx - 0.5,
                -sin * dx + cos * dy + cy - 0.5,
            );
            if sx < 0.0 || sy < 0.0 || sx > (w - 1) as f32 || sy > (h - 1) as f32 {
                continue;
            }
            let (nx, ny) = (sx.round() as u32, sy.round() as u32);
            out_mask.put_pixel(x, y, *mask.get_pixel(nx, ny));
            if let Some(p) = imageops::sample_bilinear(
                image,
                sx / (w - 1).max(1) as f32,
                sy / (h - 1).max(1) as f32,
            ) {
                out_img.put_pixel(x, y, image::Rgb([p[0], p[1], p[2]]));
            }
        }
    }
    (out_img, out_mask)
}

/// Per-channel normalisation applied to images before the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Mean of each channel in `0..1` units.
    pub mean: [f32; 3],
    /// Standard deviation of each channel in `0..1` units.
    pub std: [f32; 3],
}

impl Default for Normalize {
    /// The ImageNet statistics that pretrained ResNet encoders expect.
    fn default() -> Self {
        Normalize {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

impl Normalize {
    /// The board's normalisation with these statistics.
    pub fn board(&self) -> firmware::frame::Normalization {
        firmware::frame::Normalization {
            mean: self.mean,
            std: self.std,
        }
    }

    /// Writes `image` as planar CHW floats into `out` (3 * w * h values).
    pub fn apply(&self, image: &RgbImage, out: &mut [f32]) {
        let n = (image.width() * image.height()) as usize;
        assert_eq!(out.len(), 3 * n);
        let scale = self.std.map(|s| 1.0 / (255.0 * s));
        let offset = [0, 1, 2].map(|c| self.mean[c] / self.std[c]);
        for (i, px) in image.pixels().enumerate() {
            for c in 0..3 {
                out[c * n + i] = px[c] as f32 * scale[c] - offset[c];
            }
        }
    }
}

/// A batch ready for the model: planar normalised images and class ids.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[batch, 3, h, w]` row-major.
    pub images: Vec<f32>,
    /// Class ids (void included) of each image, concatenated: `[batch, h, w]`, or
    /// each at its own size in `mask_sizes` when the plan keeps native masks.
    pub masks: Vec<u8>,
    /// Size of each mask.
    pub mask_sizes: Vec<Size>,
    /// Images in the batch.
    pub len: usize,
    /// Size of every image.
    pub size: Size,
}

/// How batches of one pass over a source are made.
#[derive(Clone, Debug)]
pub struct BatchPlan {
    /// Samples per batch (the last batch may be smaller).
    pub batch: usize,
    /// Size of the images in the batch.
    pub size: Size,
    /// Augmentation, or `None` for evaluation.
    pub augment: Option<Augment>,
    /// Normalisation.
    pub normalize: Normalize,
    /// Shuffle seed, or `None` to keep the order.
    pub shuffle: Option<u64>,
    /// Label value of unlabelled pixels (fills what augmentation uncovers).
    pub void: u8,
    /// Worker threads that decode and augment.
    pub workers: usize,
    /// Keep every mask at its file's own resolution (for scoring as published
    /// results do) instead of resizing it to `size`.
    pub native_masks: bool,
    /// Cut a random window of this size out of each `size` sample before
    /// augmentation; the batch then holds crops. `None`: whole samples.
    pub crop: Option<Size>,
}

impl BatchPlan {
    /// Size of the batch's images: the crop if there is one, else `size`.
    pub fn out_size(&self) -> Size {
        self.crop.unwrap_or(self.size)
    }
}

/// `image` as the model sees it on the board: resized to `size` and
/// normalised by the runtime's own [`firmware::frame::Preprocessor`] (area
/// resampling when shrinking more than twice along both axes, bilinear
/// otherwise), planar CHW into `out` (`3 * size.area()` values). Evaluation,
/// prediction and quantisation all prepare pictures this way, so what they
/// measure is what the board runs.
pub fn board_input(image: &RgbImage, size: Size, normalize: &Normalize, out: &mut [f32]) {
    let frame = firmware::frame::Frame::new(
        firmware::frame::PixelFormat::Rgb8,
        Size::new(image.width(), image.height()),
        3 * image.width() as usize,
        image.as_raw(),
    )
    .expect("an RGB image is a frame");
    firmware::frame::Preprocessor::new()
        .run(&frame, size, &normalize.board(), out)
        .expect("a buffer of the model's input size");
}

/// Streams the batches of one pass over `source`, built by `plan.workers` threads
/// ahead of the consumer; they arrive in order, so a seed fixes the whole pass.
pub fn batches(source: &Source, plan: &BatchPlan) -> impl Iterator<Item = Result<Batch>> + use<> {
    let mut order: Vec<usize> = (0..source.len()).collect();
    if let Some(seed) = plan.shuffle {
        let mut rng = Rng::new(seed);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u32 + 1) as usize);
        }
    }
    let chunks: Vec<Vec<usize>> = order
        .chunks(plan.batch.max(1))
        .map(|c| c.to_vec())
        .collect();
    let n_batches = chunks.len();
    let workers = plan.workers.clamp(1, n_batches.max(1));
    let (tx, rx) = mpsc::sync_channel::<(usize, Result<Batch>)>(2 * workers);
    let chunks = Arc::new(chunks);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..workers {
        let (tx, chunks, next, source, plan) = (
            tx.clone(),
            chunks.clone(),
            next.clone(),
            source.clone(),
            plan.clone(),
        );
        std::thread::spawn(move || {
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if b >= chunks.len() {
                    return;
                }
                let batch = build_batch(&source, &plan, &chunks[b], b);
                if tx.send((b, batch)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut pending = std::collections::BTreeMap::new();
    let mut want = 0;
    std::iter::from_fn(move || {
        if want >= n_batches {
            return None;
        }
        while !pending.contains_key(&want) {
            match rx.recv() {
                Ok((b, batch)) => {
                    pending.insert(b, batch);
                }
                Err(_) => return None,
            }
        }
        let batch = pending.remove(&want);
        want += 1;
        batch
    })
}

fn build_batch(
    source: &Source,
    plan: &BatchPlan,
    indices: &[usize],
    batch_index: usize,
) -> Result<Batch> {
    let out = plan.out_size();
    let (w, h) = (out.width as usize, out.height as usize);
    let mut images = vec![0.0; indices.len() * 3 * w * h];
    let mut masks = Vec::with_capacity(indices.len() * w * h);
    let mut mask_sizes = Vec::with_capacity(indices.len());
    for (k, &i) in indices.iter().enumerate() {
        let loaded = source.load(i)?;
        let native = plan.native_masks.then(|| loaded.mask.clone());
        let out = &mut images[k * 3 * w * h..(k + 1) * 3 * w * h];
        if plan.augment.is_none() && plan.crop.is_none() {
            // Evaluation: the picture as the board prepares it.
            board_input(&loaded.image, plan.size, &plan.normalize, out);
            let mask = native.unwrap_or_else(|| {
                let (mw, mh) = (plan.size.width, plan.size.height);
                imageops::resize(&loaded.mask, mw, mh, imageops::FilterType::Nearest)
            });
            mask_sizes.push(Size::new(mask.width(), mask.height()));
            masks.extend_from_slice(mask.as_raw());
            continue;
        }
        let mut rng = Rng::new(hash3(
            plan.shuffle.unwrap_or(0),
            batch_index as u64,
            i as u64,
        ));
        let mut sample = match &plan.augment {
            Some(aug) if aug.min_scale < 1.0 => scaled_view(
                &loaded,
                plan.size,
                (aug.min_scale, aug.max_scale),
                plan.void,
                &mut rng,
            ),
            _ => resize(&loaded, plan.size),
        };
        if let Some(crop) = plan.crop {
            sample = random_crop(&sample, crop, &mut rng);
        }
        if let Some(aug) = &plan.augment {
            sample = augment(sample, aug, plan.void, &mut rng);
        }
        plan.normalize.apply(&sample.image, out);
        let mask = native.unwrap_or(sample.mask);
        mask_sizes.push(Size::new(mask.width(), mask.height()));
        masks.extend_from_slice(mask.as_raw());
    }
    Ok(Batch {
        images,
        masks,
        mask_sizes,
        len: indices.len(),
        size: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{write_gray_png, write_rgb_png};
    use firmware::VOID;

    fn camvid_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            let name = format!("a{i}.png");
            write_rgb_png(&dir.path().join("train").join(&name), 8, 6, &[100; 3 * 48]).unwrap();
            write_gray_png(
                &dir.path().join("trainannot").join(&name),
                8,
                6,
                &[i as u8; 48],
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn a_sequence_held_out_validates_and_never_trains() {
        // CamVid's shape: three drives in train/, the last one also in val/.
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("train", "0001TP_006690.png"),
            ("train", "0001TP_006720.png"),
            ("train", "0006R0_f01200.png"),
            ("train", "0016E5_00390.png"),
            ("val", "0016E5_07959.png"),
            ("val", "0016E5_07961.png"),
        ];
        for (split, name) in files {
            write_rgb_png(&dir.path().join(split).join(name), 8, 6, &[100; 3 * 48]).unwrap();
            write_gray_png(
                &dir.path().join(format!("{split}annot")).join(name),
                8,
                6,
                &[3; 48],
            )
            .unwrap();
        }
        let spec = |held: &[&str]| DataSpec {
            root: Some(dir.path().to_path_buf()),
            val_fraction: 0.2,
            synthetic_train: 0,
            synthetic_val: 0,
            seed: 0,
            val_sequences: held.iter().map(|s| s.to_string()).collect(),
            train_on_val: false,
        };
        let size = Size::new(8, 6);
        let seqs = |held: &[&str], split: &str| {
            Source::open(&spec(held), split, size).unwrap().sequences()
        };
        let owned = |v: &[(&str, usize)]| {
            v.iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect::<Vec<_>>()
        };
        // The held-out drive's frames from both splits validate; none train.
        assert_eq!(seqs(&["0016E5"], "val"), owned(&[("0016E5", 3)]));
        assert_eq!(
            seqs(&["0016E5"], "train"),
            owned(&[("0001TP", 2), ("0006R0", 1)])
        );
        assert_eq!(
            seqs(&["0006R0"], "train"),
            owned(&[("0001TP", 2), ("0016E5", 3)])
        );
        assert_eq!(
            seqs(&["0001TP", "0006R0"], "val"),
            owned(&[("0001TP", 2), ("0006R0", 1)])
        );
        // Without it, the dataset's own splits.
        assert_eq!(seqs(&[], "val"), owned(&[("0016E5", 2)]));
        // A sequence that is not there names the ones that are.
        let err = Source::open(&spec(&["0005VD"]), "val", size)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("0005VD") && err.contains("0001TP (2), 0006R0 (1), 0016E5 (3)"),
            "{err}"
        );
        let err = Source::open(&spec(&["0001TP", "0006R0", "0016E5"]), "train", size)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("leaves no frame to train on"), "{err}");

        // --train-on-val: every frame of both splits trains, val stays val,
        // and it refuses to be combined with a held-out drive or synthetic data.
        let pooled = DataSpec {
            train_on_val: true,
            ..spec(&[])
        };
        let open = |spec: &DataSpec, split| Source::open(spec, split, size).map(|s| s.sequences());
        assert_eq!(
            open(&pooled, "train").unwrap(),
            owned(&[("0001TP", 2), ("0006R0", 1), ("0016E5", 3)])
        );
        assert_eq!(open(&pooled, "val").unwrap(), owned(&[("0016E5", 2)]));
        let both = DataSpec {
            train_on_val: true,
            ..spec(&["0006R0"])
        };
        let err = open(&both, "train").unwrap_err().to_string();
        assert!(err.contains("--val-sequence"), "{err}");
        let synthetic = DataSpec {
            root: None,
            ..pooled.clone()
        };
        let err = open(&synthetic, "train").unwrap_err().to_string();
        assert!(err.contains("needs --data"), "{err}");
    }

    #[test]
    fn camvid_layout_pairs_by_name() {
        let dir = camvid_dir();
        let split = FileSplit::camvid(dir.path(), "train").unwrap();
        assert_eq!(split.pairs.len(), 3);
        let s = load_pair(
            &split.pairs[2].0,
            &split.pairs[2].1,
            &LabelSpace::camvid(),
            &MaskFormat::Ids,
        )
        .unwrap();
        assert_eq!(s.mask.as_raw(), &vec![2; 48]);
    }

    #[test]
    fn bad_inputs_name_the_file_and_the_fault() {
        let dir = camvid_dir();
        let root = dir.path();
        // Empty or missing split.
        let err = FileSplit::camvid(root, "val").unwrap_err().to_string();
        assert!(err.contains("val") && err.contains("cannot read"), "{err}");
        std::fs::create_dir_all(root.join("val")).unwrap();
        let err = FileSplit::camvid(root, "val").unwrap_err().to_string();
        assert!(err.contains("holds no images"), "{err}");
        // An image without a mask.
        write_rgb_png(&root.join("train/lonely.png"), 8, 6, &[0; 144]).unwrap();
        let err = FileSplit::camvid(root, "train").unwrap_err().to_string();
        assert!(
            err.contains("lonely.png") && err.contains("no label file"),
            "{err}"
        );
        std::fs::remove_file(root.join("train/lonely.png")).unwrap();
        // A mask of the wrong size.
        write_gray_png(&root.join("trainannot/a1.png"), 4, 6, &[0; 24]).unwrap();
        let err = load_pair(
            &root.join("train/a1.png"),
            &root.join("trainannot/a1.png"),
            &LabelSpace::camvid(),
            &MaskFormat::Ids,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("a1.png") && err.contains("4x6") && err.contains("8x6"),
            "{err}"
        );
        // A label value outside the classes and not void.
        let mut bad = vec![3u8; 48];
        bad[13] = 40;
        write_gray_png(&root.join("trainannot/a1.png"), 8, 6, &bad).unwrap();
        let err = load_pair(
            &root.join("train/a1.png"),
            &root.join("trainannot/a1.png"),
            &LabelSpace::camvid(),
            &MaskFormat::Ids,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("value 40") && err.contains("(5, 1)"), "{err}");
        // Void is fine.
        bad[13] = VOID;
        write_gray_png(&root.join("trainannot/a1.png"), 8, 6, &bad).unwrap();
        load_pair(
            &root.join("train/a1.png"),
            &root.join("trainannot/a1.png"),
            &LabelSpace::camvid(),
            &MaskFormat::Ids,
        )
        .unwrap();
        // A truncated image.
        let bytes = std::fs::read(root.join("train/a0.png")).unwrap();
        std::fs::write(root.join("train/a0.png"), &bytes[..bytes.len() / 2]).unwrap();
        let err = load_pair(
            &root.join("train/a0.png"),
            &root.join("trainannot/a0.png"),
            &LabelSpace::camvid(),
            &MaskFormat::Ids,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a0.png"), "{err}");
        // A colour mask whose colour is not a class colour.
        write_rgb_png(&root.join("trainannot/a2.png"), 8, 6, &[1; 144]).unwrap();
        let err = load_pair(
            &root.join("train/a2.png"),
            &root.join("trainannot/a2.png"),
            &LabelSpace::camvid(),
            &MaskFormat::Ids,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("a2.png") && err.contains("not in the class palette"),
            "{err}"
        );
        // A grey-and-alpha mask is no label format at all.
        image::GrayAlphaImage::new(8, 6)
            .save(root.join("trainannot/a2.png"))
            .unwrap();
        let err = load_pair(
            &root.join("train/a2.png"),
            &root.join("trainannot/a2.png"),
            &LabelSpace::camvid(),
            &MaskFormat::Ids,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("8-bit grey"), "{err}");
    }

    #[test]
    fn augmentation_keeps_labels_aligned() {
        // A picture whose colour encodes its class: after any augmentation,
        // every non-void mask pixel must sit on a pixel of its own colour band.
        let (w, h) = (64, 48);
        let mut image = RgbImage::new(w, h);
        let mut mask = GrayImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let class = (x / 16) as u8;
                image.put_pixel(x, y, image::Rgb([class * 60, 0, 0]));
                mask.put_pixel(x, y, image::Luma([class]));
            }
        }
        let aug = Augment {
            color_jitter: 0.0,
            noise: 0.0,
            blur: 0.0,
            ..Augment::default()
        };
        for seed in 0..20 {
            let out = augment(
                Sample {
                    image: image.clone(),
                    mask: mask.clone(),
                },
                &aug,
                VOID,
                &mut Rng::new(seed),
            );
            let mut agree = 0;
            let mut total = 0;
            for (p, m) in out.image.pixels().zip(out.mask.pixels()) {
                if m[0] == VOID {
                    continue;
                }
                total += 1;
                agree += ((p[0] as i32 - m[0] as i32 * 60).abs() < 20) as u32;
            }
            // Only pixels at band edges may differ (bilinear vs nearest).
            assert!(
                agree as f32 > 0.9 * total as f32,
                "seed {seed}: {agree}/{total}"
            );
        }
    }

    #[test]
    fn scaled_views_zoom_out_onto_void_and_in_with_the_source_detail() {
        // 64x48 source whose pixels encode their position; views at 32x24.
        let (w, h) = (64u32, 48u32);
        let sample = Sample {
            image: RgbImage::from_fn(w, h, |x, y| image::Rgb([4 * x as u8, 5 * y as u8, 200])),
            mask: GrayImage::from_fn(w, h, |x, _| image::Luma([(x / 16) as u8])),
        };
        let size = Size::new(32, 24);
        let mut rng = Rng::new(1);
        // Zoom 0.5: the whole picture at 16x12 somewhere on a void canvas.
        let out = scaled_view(&sample, size, (0.5, 0.5), VOID, &mut rng);
        assert_eq!(out.image.dimensions(), (32, 24));
        let labelled: Vec<_> = out.mask.pixels().filter(|m| m[0] != VOID).collect();
        assert_eq!(labelled.len(), 16 * 12);
        for (p, m) in out.image.pixels().zip(out.mask.pixels()) {
            assert_eq!(
                m[0] == VOID,
                p[2] == 0,
                "void exactly where the canvas is bare"
            );
        }
        // All four bands survive the zoom out.
        let bands: std::collections::BTreeSet<u8> = labelled.iter().map(|m| m[0]).collect();
        assert_eq!(bands.len(), 4);
        // Zoom 2: a 32x24 window of the source at full detail: neighbouring
        // pixels step by one source pixel (4 levels of red), not two.
        let mut starts = std::collections::HashSet::new();
        for _ in 0..20 {
            let out = scaled_view(&sample, size, (2.0, 2.0), VOID, &mut rng);
            assert!(out.mask.pixels().all(|m| m[0] != VOID));
            let row: Vec<i32> = (0..32)
                .map(|x| out.image.get_pixel(x, 0)[0] as i32)
                .collect();
            assert!(row.windows(2).all(|p| p[1] - p[0] == 4), "{row:?}");
            // Mask and image were cut at the same place.
            for x in 0..32 {
                assert_eq!(out.mask.get_pixel(x, 0)[0] as i32, row[x as usize] / 4 / 16);
            }
            starts.insert(row[0]);
        }
        assert!(starts.len() > 5, "windows at random places: {starts:?}");
    }

    #[test]
    fn white_balance_scales_each_channel_by_its_own_gain() {
        let grey = Sample {
            image: RgbImage::from_pixel(8, 8, image::Rgb([100, 100, 100])),
            mask: GrayImage::new(8, 8),
        };
        let aug = Augment {
            white_balance: 0.3,
            ..Augment::none()
        };
        let mut tints = 0;
        for seed in 0..10 {
            let out = augment(grey.clone(), &aug, VOID, &mut Rng::new(seed));
            let p = out.image.get_pixel(3, 3);
            assert!(p.0.iter().all(|&v| (70..=130).contains(&v)), "{p:?}");
            tints += (p[0] != p[1] || p[1] != p[2]) as usize;
            assert!(out.image.pixels().all(|q| q == p), "one gain per channel");
        }
        assert!(tints >= 9, "{tints}");
        // Off, the picture is untouched.
        let out = augment(grey.clone(), &Augment::none(), VOID, &mut Rng::new(0));
        assert_eq!(out.image, grey.image);
    }

    #[test]
    fn crops_cut_image_and_mask_at_the_same_random_place() {
        // Each pixel encodes its position, so a crop tells where it was cut.
        let (w, h) = (40u32, 30u32);
        let sample = Sample {
            image: RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 0])),
            mask: GrayImage::from_fn(w, h, |x, y| image::Luma([(x + 2 * y) as u8])),
        };
        let mut rng = Rng::new(5);
        let mut corners = std::collections::HashSet::new();
        for _ in 0..50 {
            let crop = random_crop(&sample, Size::new(16, 8), &mut rng);
            assert_eq!(crop.image.dimensions(), (16, 8));
            assert_eq!(crop.mask.dimensions(), (16, 8));
            let [x0, y0, _] = crop.image.get_pixel(0, 0).0;
            assert!(x0 as u32 + 16 <= w && y0 as u32 + 8 <= h);
            for (x, y, p) in crop.image.enumerate_pixels() {
                assert_eq!(p.0, [x0 + x as u8, y0 + y as u8, 0]);
                let m = crop.mask.get_pixel(x, y)[0] as u32;
                assert_eq!(m, (x0 as u32 + x) + 2 * (y0 as u32 + y));
            }
            corners.insert((x0, y0));
        }
        assert!(corners.len() > 20, "crops must land in many places");
        // A crop as large as the sample (or larger) is the whole sample.
        let whole = random_crop(&sample, Size::new(50, 30), &mut rng);
        assert_eq!(whole.image, sample.image);
        assert_eq!(whole.mask, sample.mask);
    }

    #[test]
    fn batches_of_crops_have_the_crop_size() {
        let source = Source::synthetic(5, Size::new(64, 48), 9);
        let plan = BatchPlan {
            batch: 2,
            size: Size::new(64, 48),
            augment: Some(Augment::default()),
            normalize: Normalize::default(),
            shuffle: Some(1),
            void: VOID,
            workers: 2,
            native_masks: false,
            crop: Some(Size::new(32, 16)),
        };
        let all: Vec<Batch> = batches(&source, &plan).map(Result::unwrap).collect();
        assert_eq!(all.iter().map(|b| b.len).sum::<usize>(), 5);
        for b in &all {
            assert_eq!(b.size, Size::new(32, 16));
            assert_eq!(b.images.len(), b.len * 3 * 32 * 16);
            assert_eq!(b.masks.len(), b.len * 32 * 16);
            assert!(b.mask_sizes.iter().all(|&s| s == Size::new(32, 16)));
        }
    }

    #[test]
    fn synthetic_scenes_render_once_and_clones_share_them() {
        let source = Source::synthetic(3, Size::new(64, 48), 4);
        let Source::Synthetic { rendered, .. } = source.clone() else {
            unreachable!()
        };
        assert!(rendered.iter().all(|c| c.get().is_none()));
        let first = source.clone().load(1).unwrap();
        assert!(rendered[1].get().is_some() && rendered[0].get().is_none());
        let again = source.load(1).unwrap();
        assert_eq!(first.image, again.image);
        assert_eq!(first.mask, again.mask);
        // A fresh source renders the same scene from scratch.
        let fresh = Source::synthetic(3, Size::new(64, 48), 4).load(1).unwrap();
        assert_eq!(first.image, fresh.image);
        // Too many scenes for the memory budget: nothing is kept.
        let big = Source::synthetic(SCENE_CACHE_BYTES / (4 * 64 * 48) + 1, Size::new(64, 48), 4);
        let Source::Synthetic { rendered, .. } = &big else {
            unreachable!()
        };
        assert!(rendered.is_empty());
        assert_eq!(big.load(1).unwrap().mask, first.mask);
    }

    #[test]
    fn batches_arrive_in_order_and_cover_the_source() {
        let source = Source::synthetic(7, Size::new(32, 24), 3);
        let plan = BatchPlan {
            batch: 3,
            size: Size::new(32, 24),
            augment: None,
            normalize: Normalize::default(),
            shuffle: None,
            void: VOID,
            workers: 2,
            native_masks: false,
            crop: None,
        };
        let batches: Vec<Batch> = batches(&source, &plan).collect::<Result<_>>().unwrap();
        assert_eq!(
            batches.iter().map(|b| b.len).collect::<Vec<_>>(),
            vec![3, 3, 1]
        );
        let first = source.load(0).unwrap();
        assert_eq!(&batches[0].masks[..32 * 24], first.mask.as_raw().as_slice());
        let again: Vec<Batch> = super::batches(&source, &plan)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(again[2].images, batches[2].images);
    }

    #[test]
    fn cityscapes_layout_maps_label_ids_to_train_ids() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let image = root.join("leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png");
        let mask = root.join("gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png");
        write_rgb_png(&image, 4, 1, &[9; 12]).unwrap();
        // road (7), sky (23), bicycle (33), and "ego vehicle" (1) which is void.
        write_gray_png(&mask, 4, 1, &[7, 23, 33, 1]).unwrap();
        let split = FileSplit::open(root, "val", 0.2, 0).unwrap();
        assert_eq!(split.labels.num_classes(), 19);
        let s = Source::Files(split).load(0).unwrap();
        assert_eq!(s.mask.as_raw(), &vec![0, 10, 18, 255]);
        std::fs::remove_file(&mask).unwrap();
        let err = FileSplit::open(root, "val", 0.2, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("aachen_000000_000019_leftImg8bit.png") && err.contains("labelIds"),
            "{err}"
        );
    }

    #[test]
    fn plain_folder_with_binary_masks_splits_by_fraction() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..20 {
            write_rgb_png(&root.join(format!("images/c{i:02}.png")), 3, 1, &[0; 9]).unwrap();
            write_gray_png(
                &root.join(format!("masks/c{i:02}.png")),
                3,
                1,
                &[0, 255, 255],
            )
            .unwrap();
        }
        let train = FileSplit::open(root, "train", 0.25, 1).unwrap();
        let val = FileSplit::open(root, "val", 0.25, 1).unwrap();
        assert_eq!(train.pairs.len() + val.pairs.len(), 20);
        assert!(
            !val.pairs.is_empty() && val.pairs.len() < 10,
            "{}",
            val.pairs.len()
        );
        assert!(train.pairs.iter().all(|p| !val.pairs.contains(p)));
        assert_eq!(train.labels, LabelSpace::binary());
        assert_eq!(
            Source::Files(train).load(0).unwrap().mask.as_raw(),
            &vec![0, 1, 1]
        );
        // The same seed gives the same split.
        assert_eq!(
            FileSplit::open(root, "val", 0.25, 1).unwrap().pairs,
            val.pairs
        );
    }

    #[test]
    fn colour_masks_decode_through_class_dict() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("class_dict.csv"),
            "name,r,g,b\nSky,128,128,128\nRoad,128,64,128\nvoid,0,0,0\n",
        )
        .unwrap();
        write_rgb_png(&root.join("train/x.png"), 3, 1, &[0; 9]).unwrap();
        write_rgb_png(
            &root.join("trainannot/x.png"),
            3,
            1,
            &[128, 64, 128, 0, 0, 0, 128, 128, 128],
        )
        .unwrap();
        let split = FileSplit::open(root, "train", 0.2, 0).unwrap();
        assert_eq!(split.labels.names, vec!["Sky", "Road"]);
        let source = Source::Files(split);
        assert_eq!(source.load(0).unwrap().mask.as_raw(), &vec![1, 2, 0]);
        write_rgb_png(
            &root.join("trainannot/x.png"),
            3,
            1,
            &[1, 2, 3, 0, 0, 0, 0, 0, 0],
        )
        .unwrap();
        let err = source.load(0).unwrap_err().to_string();
        assert!(
            err.contains("x.png") && err.contains("[1, 2, 3]") && err.contains("(0, 0)"),
            "{err}"
        );
    }
}
