//! Training curves drawn with plotters: loss and validation mIoU per epoch.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::run::EpochRecord;

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A font that ships with a crate, so plots need no system fonts.
        let font = epaint_default_fonts::UBUNTU_LIGHT;
        if register_font("sans-serif", FontStyle::Normal, font).is_err() {
            log::warn!("could not register the plot font; curves will lack text");
        }
    });
}

/// Draws `curves.png`: training loss (left) and validation mIoU (right) per epoch.
pub fn curves(path: &Path, history: &[EpochRecord]) -> Result<()> {
    fonts();
    let (w, h) = (960u32, 400u32);
    let mut pixels = vec![255u8; (3 * w * h) as usize];
    let err = |e: String| Error::BadFile {
        path: path.to_owned(),
        what: format!("cannot draw curves: {e}"),
    };
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        let (left, right) = root.split_horizontally(w / 2);
        let epochs = history.len().max(2) as f64;
        let max_loss = history.iter().map(|r| r.train_loss).fold(1e-6, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&left)
            .caption("training loss", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(1.0..epochs, 0.0..max_loss)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                history.iter().map(|r| (r.epoch as f64, r.train_loss)),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?;
        // Epochs skipped by `--val-every` have no score.
        let validated = history
            .iter()
            .filter_map(|r| Some((r.epoch as f64, r.val_miou?)));
        let mut chart = ChartBuilder::on(&right)
            .caption("validation mIoU", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(1.0..epochs, 0.0..1.0)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(validated.clone(), RED.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(validated.map(|point| Circle::new(point, 3, RED.filled())))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let png = crate::io::encode_png(path, w, h, image::ExtendedColorType::Rgb8, &pixels)?;
    write_atomic(path, &png)
}
