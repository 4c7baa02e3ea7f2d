//! Writing files so that a crash never leaves a half-written one: the bytes go to
//! a temporary file in the destination folder, which is then renamed over the target.

use std::io::Cursor;
use std::path::Path;

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically, creating the parent folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    firmware::fsio::write_atomic(path, bytes).map_err(|(path, e)| Error::io(&path, e))
}

/// Encodes 8-bit pixels as PNG in memory.
pub fn encode_png(
    path: &Path,
    width: u32,
    height: u32,
    color: ExtendedColorType,
    pixels: &[u8],
) -> Result<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    PngEncoder::new(&mut buf)
        .write_image(pixels, width, height, color)
        .map_err(|source| Error::Image {
            path: path.to_owned(),
            source,
        })?;
    Ok(buf.into_inner())
}

/// Writes interleaved RGB8 pixels as a PNG, atomically.
pub fn write_rgb_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    write_atomic(
        path,
        &encode_png(path, width, height, ExtendedColorType::Rgb8, rgb)?,
    )
}

/// Writes one byte per pixel (class ids, grey levels) as an 8-bit grey PNG, atomically.
pub fn write_gray_png(path: &Path, width: u32, height: u32, gray: &[u8]) -> Result<()> {
    write_atomic(
        path,
        &encode_png(path, width, height, ExtendedColorType::L8, gray)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["a.bin"]);
    }

    #[test]
    fn png_round_trips_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        let labels: Vec<u8> = (0..12u8).cycle().take(6 * 4).collect();
        write_gray_png(&path, 6, 4, &labels).unwrap();
        let back = image::open(&path).unwrap();
        assert_eq!(back.color(), image::ColorType::L8);
        assert_eq!(back.into_luma8().into_raw(), labels);
    }

    #[test]
    fn write_into_a_file_path_names_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = write_atomic(&file.join("a.bin"), b"y")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}
