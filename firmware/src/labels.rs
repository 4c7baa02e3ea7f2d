//! Label spaces and label files: the classes a dataset and a model share,
//! their colours and the value of unlabelled pixels; a `class_dict.csv`; and
//! a label picture decoded into class ids, every value checked.
//!
//! Pure parsers over bytes and text (the training host reads the files), so
//! they can be fuzzed without the rest of the host.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// Class names, display colours and the void value of a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelSpace {
    /// Class names by id.
    pub names: Vec<String>,
    /// Display colour of each class.
    pub palette: Vec<[u8; 3]>,
    /// Label value of unlabelled pixels, ignored by losses and metrics.
    pub void: u8,
}

/// Cityscapes `labelIds` to the 19 training ids (255 = void), from the official
/// `cityscapesscripts/helpers/labels.py`.
pub const CITYSCAPES_TRAIN_IDS: [(u8, u8); 19] = [
    (7, 0),
    (8, 1),
    (11, 2),
    (12, 3),
    (13, 4),
    (17, 5),
    (19, 6),
    (20, 7),
    (21, 8),
    (22, 9),
    (23, 10),
    (24, 11),
    (25, 12),
    (26, 13),
    (27, 14),
    (28, 15),
    (31, 16),
    (32, 17),
    (33, 18),
];

/// How label files encode classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskFormat {
    /// 8-bit class ids (grey PNG), or colours of the label space's palette.
    Ids,
    /// 0/255 masks mapped to classes 0/1.
    Binary,
    /// Cityscapes `labelIds`, mapped to the 19 training ids.
    CityscapesLabelIds,
}

/// A label file or class list that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// A line of a `class_dict.csv`.
    #[error("line {line}: {what}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        what: &'static str,
    },
    /// A `class_dict.csv` with no class or more than 254.
    #[error("{0} classes; expected 1 to 254")]
    ClassCount(usize),
    /// A label picture that does not decode.
    #[error("{0}")]
    Decode(#[from] image::ImageError),
    /// A label picture whose size is not its image's.
    #[error("label is {}x{} but its image is {}x{}", label.0, label.1, image.0, image.1)]
    Size {
        /// The label's width and height.
        label: (u32, u32),
        /// The image's.
        image: (u32, u32),
    },
    /// A label picture in a colour type that holds no class ids.
    #[error(
        "label is {0}; expected an 8-bit grey image of class ids (or palette colours with a class_dict.csv)"
    )]
    ColorType(String),
    /// A colour label pixel whose colour is no class's.
    #[error("colour {color:?} at pixel ({x}, {y}) is not in the class palette")]
    Colour {
        /// The pixel's colour.
        color: [u8; 3],
        /// Column.
        x: u32,
        /// Row.
        y: u32,
    },
    /// A label value that is neither a class nor void.
    #[error(
        "label value {value} at pixel ({x}, {y}) is neither a class id (0..{classes}) nor void ({void})"
    )]
    Value {
        /// The value.
        value: u8,
        /// Column.
        x: u32,
        /// Row.
        y: u32,
        /// Classes of the label space.
        classes: usize,
        /// Its void value.
        void: u8,
    },
}

impl LabelSpace {
    /// CamVid's 11 classes, void 11 (also the label space of synthetic scenes).
    /// The palette includes void's colour, so SegNet-style colour labels decode.
    pub fn camvid() -> LabelSpace {
        LabelSpace {
            names: crate::CLASS_NAMES[..crate::NUM_CLASSES]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            palette: crate::PALETTE.to_vec(),
            void: crate::VOID,
        }
    }

    /// Cityscapes' 19 training classes, void 255.
    pub fn cityscapes() -> LabelSpace {
        let names = [
            "road",
            "sidewalk",
            "building",
            "wall",
            "fence",
            "pole",
            "traffic light",
            "traffic sign",
            "vegetation",
            "terrain",
            "sky",
            "person",
            "rider",
            "car",
            "truck",
            "bus",
            "train",
            "motorcycle",
            "bicycle",
        ];
        let palette = [
            [128, 64, 128],
            [244, 35, 232],
            [70, 70, 70],
            [102, 102, 156],
            [190, 153, 153],
            [153, 153, 153],
            [250, 170, 30],
            [220, 220, 0],
            [107, 142, 35],
            [152, 251, 152],
            [70, 130, 180],
            [220, 20, 60],
            [255, 0, 0],
            [0, 0, 142],
            [0, 0, 70],
            [0, 60, 100],
            [0, 80, 100],
            [0, 0, 230],
            [119, 11, 32],
        ];
        LabelSpace {
            names: names.iter().map(|s| s.to_string()).collect(),
            palette: palette.to_vec(),
            void: 255,
        }
    }

    /// Two classes, background and foreground, for masks stored as 0/255.
    pub fn binary() -> LabelSpace {
        LabelSpace {
            names: vec!["background".into(), "foreground".into()],
            palette: vec![[0, 0, 0], [255, 255, 255]],
            void: 255,
        }
    }

    /// Reads the text of a `class_dict.csv` (`name,r,g,b` with a header, as
    /// shipped with the 32-class CamVid); a class named `void` or `Void`
    /// becomes the void value.
    pub fn from_class_dict(text: &str) -> Result<LabelSpace, LabelError> {
        let mut names = Vec::new();
        let mut palette = Vec::new();
        let mut void = None;
        for (i, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |what| LabelError::Line { line: i + 1, what };
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [name, r, g, b] = fields[..] else {
                return Err(bad("expected name,r,g,b"));
            };
            let c = |v: &str| {
                v.parse::<u8>()
                    .map_err(|_| bad("colour components must be 0..255"))
            };
            let color = [c(r)?, c(g)?, c(b)?];
            if name.eq_ignore_ascii_case("void") {
                void = Some(color);
                continue;
            }
            names.push(name.to_string());
            palette.push(color);
        }
        if names.is_empty() || names.len() > 254 {
            return Err(LabelError::ClassCount(names.len()));
        }
        let void_id = names.len() as u8;
        if let Some(color) = void {
            palette.push(color);
        }
        Ok(LabelSpace {
            names,
            palette,
            void: void_id,
        })
    }

    /// Number of classes (void excluded).
    pub fn num_classes(&self) -> usize {
        self.names.len()
    }

    /// The class id of a mask colour, or void for the void colour.
    pub fn id_of_color(&self, color: [u8; 3]) -> Option<u8> {
        let id = self.palette.iter().position(|&c| c == color)?;
        Some(if id >= self.num_classes() {
            self.void
        } else {
            id as u8
        })
    }

    /// The palette padded so that index `void` (and anything below) has a colour.
    pub fn display_palette(&self) -> Vec<[u8; 3]> {
        let mut p = self.palette[..self.num_classes()].to_vec();
        p.resize(self.void as usize + 1, [0, 0, 0]);
        p
    }
}

/// Largest side of a label picture.
pub const MAX_SIDE: u32 = 16_384;

/// Most memory decoding one label picture may take (an 8K colour label is
/// about 100 MiB).
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// A reader of the picture `bytes`, its format guessed from its content and
/// its size and memory bounded ([`MAX_SIDE`], [`MAX_DECODE_BYTES`]), so that
/// no header can make it allocate more.
fn reader(bytes: &[u8]) -> Result<image::ImageReader<std::io::Cursor<&[u8]>>, LabelError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| LabelError::Decode(image::ImageError::IoError(e)))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    Ok(reader)
}

/// Decodes the label picture `bytes` (PNG, or any format the `image` crate
/// reads here) of an image of size `dims` into class ids, row by row, as
/// `format` says; every value must be a class of `labels` or void.
pub fn decode_mask(
    bytes: &[u8],
    dims: (u32, u32),
    labels: &LabelSpace,
    format: MaskFormat,
) -> Result<Vec<u8>, LabelError> {
    let (w, h) = reader(bytes)?.into_dimensions()?;
    if (w, h) != dims {
        return Err(LabelError::Size {
            label: (w, h),
            image: dims,
        });
    }
    let lab = reader(bytes)?.decode()?;
    let n = labels.num_classes();
    let mut ids = match lab {
        image::DynamicImage::ImageLuma8(l) => l.into_raw(),
        image::DynamicImage::ImageRgb8(_) | image::DynamicImage::ImageRgba8(_)
            if format == MaskFormat::Ids =>
        {
            let rgb = lab.into_rgb8();
            let mut ids = vec![0; rgb.as_raw().len() / 3];
            for (i, (p, out)) in rgb.pixels().zip(&mut ids).enumerate() {
                *out = labels.id_of_color(p.0).ok_or(LabelError::Colour {
                    color: p.0,
                    x: i as u32 % w,
                    y: i as u32 / w,
                })?;
            }
            ids
        }
        other => return Err(LabelError::ColorType(format!("{:?}", other.color()))),
    };
    match format {
        MaskFormat::Ids => {}
        MaskFormat::Binary => ids.iter_mut().for_each(|v| *v = (*v >= 128) as u8),
        MaskFormat::CityscapesLabelIds => {
            let mut table = [labels.void; 256];
            for (label_id, train_id) in CITYSCAPES_TRAIN_IDS {
                table[label_id as usize] = train_id;
            }
            ids.iter_mut().for_each(|v| *v = table[*v as usize]);
        }
    }
    if let Some((i, &value)) = ids
        .iter()
        .enumerate()
        .find(|&(_, &v)| v as usize >= n && v != labels.void)
    {
        return Err(LabelError::Value {
            value,
            x: i as u32 % w,
            y: i as u32 / w,
            classes: n,
            void: labels.void,
        });
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_dict_reads_and_rejects() {
        let l = LabelSpace::from_class_dict(
            "name,r,g,b\nSky,128,128,128\nRoad,128,64,128\nVoid,0,0,0\n",
        )
        .unwrap();
        assert_eq!(l.names, vec!["Sky", "Road"]);
        assert_eq!(l.void, 2);
        assert_eq!(l.id_of_color([128, 64, 128]), Some(1));
        assert_eq!(l.id_of_color([0, 0, 0]), Some(2));
        assert_eq!(l.id_of_color([1, 2, 3]), None);
        let err = LabelSpace::from_class_dict("name,r,g,b\nSky,300,0,0\n").unwrap_err();
        assert_eq!(err.to_string(), "line 2: colour components must be 0..255");
        let err = LabelSpace::from_class_dict("name,r,g,b\n").unwrap_err();
        assert_eq!(err.to_string(), "0 classes; expected 1 to 254");
    }

    #[test]
    fn standard_spaces() {
        assert_eq!(LabelSpace::camvid().num_classes(), 11);
        assert_eq!(LabelSpace::cityscapes().num_classes(), 19);
        assert_eq!(LabelSpace::cityscapes().palette.len(), 19);
        assert_eq!(LabelSpace::camvid().display_palette().len(), 12);
        assert_eq!(LabelSpace::binary().display_palette().len(), 256);
    }

    fn png(img: image::DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn masks_decode_to_checked_ids() {
        let camvid = LabelSpace::camvid();
        let grey = |v: Vec<u8>| png(image::GrayImage::from_raw(3, 2, v).unwrap().into());
        let ok = grey(vec![0, 1, 2, 10, 11, 3]);
        assert_eq!(
            decode_mask(&ok, (3, 2), &camvid, MaskFormat::Ids).unwrap(),
            vec![0, 1, 2, 10, 11, 3]
        );
        let err = decode_mask(&ok, (2, 3), &camvid, MaskFormat::Ids).unwrap_err();
        assert!(matches!(err, LabelError::Size { .. }), "{err}");
        let err = decode_mask(
            &grey(vec![0, 1, 2, 200, 0, 0]),
            (3, 2),
            &camvid,
            MaskFormat::Ids,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "label value 200 at pixel (0, 1) is neither a class id (0..11) nor void (11)"
        );
        let binary = grey(vec![0, 255, 0, 255, 255, 0]);
        assert_eq!(
            decode_mask(&binary, (3, 2), &LabelSpace::binary(), MaskFormat::Binary).unwrap(),
            vec![0, 1, 0, 1, 1, 0]
        );
        let cityscapes = grey(vec![7, 26, 0, 33, 1, 255]);
        assert_eq!(
            decode_mask(
                &cityscapes,
                (3, 2),
                &LabelSpace::cityscapes(),
                MaskFormat::CityscapesLabelIds
            )
            .unwrap(),
            vec![0, 13, 255, 18, 255, 255]
        );
        let road = crate::PALETTE[3];
        let colours = png(image::RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb(if x == 0 { road } else { [1, 2, 3] })
        })
        .into());
        let err = decode_mask(&colours, (2, 1), &camvid, MaskFormat::Ids).unwrap_err();
        assert_eq!(
            err.to_string(),
            "colour [1, 2, 3] at pixel (1, 0) is not in the class palette"
        );
        assert!(matches!(
            decode_mask(b"not a picture", (2, 1), &camvid, MaskFormat::Ids),
            Err(LabelError::Decode(_))
        ));
    }
}
