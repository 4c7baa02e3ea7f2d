//! Label spaces: the classes a dataset and a model share, their colours, and the
//! value that marks unlabelled pixels.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

impl LabelSpace {
    /// CamVid's 11 classes, void 11 (also the label space of synthetic scenes).
    /// The palette includes void's colour, so SegNet-style colour labels decode.
    pub fn camvid() -> LabelSpace {
        LabelSpace {
            names: firmware::CLASS_NAMES[..firmware::NUM_CLASSES]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            palette: firmware::PALETTE.to_vec(),
            void: firmware::VOID,
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

    /// Reads a `class_dict.csv` (`name,r,g,b` with a header, as shipped with the
    /// 32-class CamVid); a class named `void` or `Void` becomes the void value.
    pub fn from_class_dict(path: &Path) -> Result<LabelSpace> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |line: usize, what: &str| Error::BadFile {
            path: path.to_owned(),
            what: format!("line {line}: {what}"),
        };
        let mut names = Vec::new();
        let mut palette = Vec::new();
        let mut void = None;
        for (i, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [name, r, g, b] = fields[..] else {
                return Err(bad(i + 1, "expected name,r,g,b"));
            };
            let c = |v: &str| {
                v.parse::<u8>()
                    .map_err(|_| bad(i + 1, "colour components must be 0..255"))
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
            return Err(Error::BadFile {
                path: path.to_owned(),
                what: format!("{} classes; expected 1 to 254", names.len()),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_dict_reads_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("class_dict.csv");
        std::fs::write(
            &path,
            "name,r,g,b\nSky,128,128,128\nRoad,128,64,128\nVoid,0,0,0\n",
        )
        .unwrap();
        let l = LabelSpace::from_class_dict(&path).unwrap();
        assert_eq!(l.names, vec!["Sky", "Road"]);
        assert_eq!(l.void, 2);
        assert_eq!(l.id_of_color([128, 64, 128]), Some(1));
        assert_eq!(l.id_of_color([0, 0, 0]), Some(2));
        assert_eq!(l.id_of_color([1, 2, 3]), None);
        std::fs::write(&path, "name,r,g,b\nSky,300,0,0\n").unwrap();
        let err = LabelSpace::from_class_dict(&path).unwrap_err().to_string();
        assert!(
            err.contains("class_dict.csv") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn standard_spaces() {
        assert_eq!(LabelSpace::camvid().num_classes(), 11);
        assert_eq!(LabelSpace::cityscapes().num_classes(), 19);
        assert_eq!(LabelSpace::cityscapes().palette.len(), 19);
        assert_eq!(LabelSpace::camvid().display_palette().len(), 12);
        assert_eq!(LabelSpace::binary().display_palette().len(), 256);
    }
}
