//! Predictions as pictures: class-id masks, colour masks, overlays, and a grid of
//! image / ground truth / prediction like the figures in segmentation papers.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use firmware::Size;
use firmware::post::{colorize, overlay};
use image::RgbImage;

use crate::data::{Normalize, Source, board_input, resize};
use crate::error::{Error, Result};
use crate::inference::{Tta, predict_with, resize_mask};
use crate::io::{write_gray_png, write_rgb_png};
use crate::labels::LabelSpace;
use crate::model::Model;

/// Opacity of class colours over the picture in overlays: the board's.
pub use firmware::sink::OVERLAY_ALPHA;

/// A trained model with what it needs to segment pictures of any size.
#[derive(Debug)]
pub struct Predictor {
    /// The network.
    pub model: Model,
    /// Its input size; pictures are resized to it and masks back.
    pub size: Size,
    /// The normalisation it was trained with.
    pub normalize: Normalize,
    /// Its classes.
    pub labels: LabelSpace,
    /// Where it runs.
    pub device: Device,
}

impl Predictor {
    /// Weights `weights` of the run in `run`, on the CPU.
    pub fn from_run(run: &crate::run::RunDir, weights: &str) -> Result<Predictor> {
        let config = run.config()?;
        let device = Device::flex();
        Ok(Predictor {
            model: run.load_model(weights, &device)?,
            size: config.size,
            normalize: config.normalize,
            labels: config.labels,
            device,
        })
    }

    /// The class mask of `image` at the model's size, prepared as the board
    /// prepares it ([`crate::data::board_input`]).
    pub fn mask(&self, image: &RgbImage) -> Vec<u8> {
        self.mask_with(image, Tta::None)
    }

    /// [`Self::mask`] under test-time augmentation `tta`, as `edgeseg eval
    /// --tta` and `edgeseg-run --tta` compute it.
    pub fn mask_with(&self, image: &RgbImage, tta: Tta) -> Vec<u8> {
        predict_with(
            &self.model,
            self.input(image),
            1,
            self.size,
            &self.device,
            tta,
        )
    }

    /// The scores `[classes, h, w]` behind [`Self::mask`].
    pub fn logits(&self, image: &RgbImage) -> Vec<f32> {
        crate::inference::logits(&self.model, self.input(image), 1, self.size, &self.device)
    }

    /// `image` prepared as the board prepares it, at the model's size.
    fn input(&self, image: &RgbImage) -> Vec<f32> {
        let mut input = vec![0.0; 3 * self.size.area()];
        board_input(image, self.size, &self.normalize, &mut input);
        input
    }

    /// The class mask of `image`, at the image's own size.
    pub fn segment(&self, image: &RgbImage) -> Vec<u8> {
        let mask = self.mask(image);
        resize_mask(&mask, self.size, Size::new(image.width(), image.height()))
    }
}

/// The colour mask of `mask` in the colours of `labels`.
pub fn color_mask(mask: &[u8], size: Size, labels: &LabelSpace) -> RgbImage {
    let mut rgb = vec![0; 3 * mask.len()];
    colorize(mask, &labels.display_palette(), &mut rgb).expect("buffer sized for the mask");
    RgbImage::from_raw(size.width, size.height, rgb).expect("buffer fits")
}

/// `image` with the class colours of `mask` blended over it (void left as is).
pub fn overlay_image(image: &RgbImage, mask: &[u8], labels: &LabelSpace) -> RgbImage {
    let mut out = image.clone();
    overlay(
        &mut out,
        mask,
        &labels.display_palette(),
        OVERLAY_ALPHA,
        Some(labels.void),
    )
    .expect("mask fits the image");
    out
}

/// Writes `STEM_mask.png` (class ids), `STEM_color.png` and `STEM_overlay.png` for
/// each image into `out`, returning the files written.
pub fn predict_files(
    predictor: &Predictor,
    images: &[PathBuf],
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for path in images {
        let image = image::open(path)
            .map_err(|source| Error::Image {
                path: path.clone(),
                source,
            })?
            .into_rgb8();
        let mask = predictor.segment(&image);
        let own = Size::new(image.width(), image.height());
        let stem = path
            .file_stem()
            .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
        let files = [
            out.join(format!("{stem}_mask.png")),
            out.join(format!("{stem}_color.png")),
            out.join(format!("{stem}_overlay.png")),
        ];
        write_gray_png(&files[0], own.width, own.height, &mask)?;
        write_rgb_png(
            &files[1],
            own.width,
            own.height,
            color_mask(&mask, own, &predictor.labels).as_raw(),
        )?;
        write_rgb_png(
            &files[2],
            own.width,
            own.height,
            overlay_image(&image, &mask, &predictor.labels).as_raw(),
        )?;
        written.extend(files);
    }
    Ok(written)
}

/// Writes `path` (a PNG): [`grid`] of the first `count` samples of `source`,
/// in cells 240 pixels wide with the model's aspect ratio.
pub fn write_grid(predictor: &Predictor, source: &Source, count: usize, path: &Path) -> Result<()> {
    let size = predictor.size;
    let cell = Size::new(240, (240 * size.height / size.width).max(1));
    let picture = grid(predictor, source, count, cell)?;
    crate::io::write_rgb_png(path, picture.width(), picture.height(), picture.as_raw())
}

/// A picture with one column per sample and three rows: the image, its ground
/// truth and the prediction, each `cell` in size with a 4-pixel white gap.
pub fn grid(predictor: &Predictor, source: &Source, count: usize, cell: Size) -> Result<RgbImage> {
    let count = count.min(source.len()).max(1);
    let gap = 4;
    let (w, h) = (
        count as u32 * (cell.width + gap) - gap,
        3 * (cell.height + gap) - gap,
    );
    let mut out = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for k in 0..count {
        let sample = source.load(k)?;
        let prediction = predictor.segment(&sample.image);
        let own = Size::new(sample.image.width(), sample.image.height());
        let small = resize(&sample, cell);
        let pred = resize_mask(&prediction, own, cell);
        let x = k as i64 * (cell.width + gap) as i64;
        let rows = [
            small.image.clone(),
            color_mask(small.mask.as_raw(), cell, &predictor.labels),
            color_mask(&pred, cell, &predictor.labels),
        ];
        for (r, picture) in rows.iter().enumerate() {
            image::imageops::replace(&mut out, picture, x, r as i64 * (cell.height + gap) as i64);
        }
    }
    Ok(out)
}
