//! The dataset label reader on arbitrary bytes, as a dataset folder may hold
//! them: a label picture decoded into class ids, or a `class_dict.csv`. No
//! input may panic, hang or allocate past the reader's bounds; every id it
//! returns is a class of the label space or void, one per pixel.

use firmware::labels::{LabelSpace, MaskFormat, decode_mask};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // The first byte picks what the bytes are read as.
        let Some((&pick, bytes)) = data.split_first() else {
            return;
        };
        if pick & 0x80 != 0 {
            if let Ok(text) = std::str::from_utf8(bytes)
                && let Ok(space) = LabelSpace::from_class_dict(text)
            {
                assert!((1..=254).contains(&space.num_classes()));
                assert_eq!(usize::from(space.void), space.num_classes());
                for (id, &colour) in space.palette.iter().enumerate().take(space.num_classes()) {
                    // The first class of a colour wins.
                    let first = space.palette.iter().position(|&c| c == colour).unwrap();
                    assert_eq!(space.id_of_color(colour), Some(first as u8), "class {id}");
                }
            }
            return;
        }
        let (labels, format) = match pick % 4 {
            0 => (LabelSpace::camvid(), MaskFormat::Ids),
            1 => (LabelSpace::binary(), MaskFormat::Binary),
            2 => (LabelSpace::cityscapes(), MaskFormat::CityscapesLabelIds),
            _ => (LabelSpace::cityscapes(), MaskFormat::Ids),
        };
        // The image's size: the label's own (so decoding is reached), or one
        // column more when bit 2 is set (the mismatch must be refused).
        let Some((w, h)) = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
        else {
            assert!(decode_mask(bytes, (1, 1), &labels, format).is_err());
            return;
        };
        let mismatch = pick & 4 != 0;
        let dims = (w.saturating_add(mismatch as u32), h);
        if let Ok(ids) = decode_mask(bytes, dims, &labels, format) {
            assert!(!mismatch || w == u32::MAX);
            assert_eq!(ids.len() as u64, u64::from(w) * u64::from(h));
            let n = labels.num_classes();
            assert!(ids.iter().all(|&v| (v as usize) < n || v == labels.void));
        }
    });
}
