//! The label space shared by synthetic scenes, CamVid and every exported model.
//!
//! Ids and colours follow the 11-class CamVid benchmark as used by SegNet
//! (`SegNet-Tutorial/Scripts/camvid.py`), so a model trained on synthetic scenes
//! and one trained on CamVid mean the same thing by the same id.

/// Number of real classes (void excluded).
pub const NUM_CLASSES: usize = 11;

/// The label value of pixels that belong to no class; losses and metrics ignore it.
pub const VOID: u8 = 11;

/// Class ids, in CamVid order.
#[allow(missing_docs)]
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Sky = 0,
    Building = 1,
    Pole = 2,
    Road = 3,
    Pavement = 4,
    Tree = 5,
    SignSymbol = 6,
    Fence = 7,
    Car = 8,
    Pedestrian = 9,
    Bicyclist = 10,
    Void = 11,
}

impl Class {
    /// All classes including void, in id order.
    pub const ALL: [Class; NUM_CLASSES + 1] = [
        Class::Sky,
        Class::Building,
        Class::Pole,
        Class::Road,
        Class::Pavement,
        Class::Tree,
        Class::SignSymbol,
        Class::Fence,
        Class::Car,
        Class::Pedestrian,
        Class::Bicyclist,
        Class::Void,
    ];

    /// The label value stored in masks.
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// The class for a label value, if it is one of the 12 (void included).
    pub const fn from_id(id: u8) -> Option<Class> {
        if (id as usize) < Class::ALL.len() {
            Some(Class::ALL[id as usize])
        } else {
            None
        }
    }

    /// Human-readable name as in the CamVid papers.
    pub const fn name(self) -> &'static str {
        CLASS_NAMES[self as usize]
    }

    /// Display colour.
    pub const fn color(self) -> [u8; 3] {
        PALETTE[self as usize]
    }
}

/// Class names indexed by id; index 11 is void.
pub const CLASS_NAMES: [&str; NUM_CLASSES + 1] = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
    "Void",
];

/// The CamVid/SegNet colour of each class id; index 11 (void) is black.
pub const PALETTE: [[u8; 3]; NUM_CLASSES + 1] = [
    [128, 128, 128],
    [128, 0, 0],
    [192, 192, 128],
    [128, 64, 128],
    [60, 40, 222],
    [128, 128, 0],
    [192, 128, 128],
    [64, 64, 128],
    [64, 0, 128],
    [64, 64, 0],
    [0, 128, 192],
    [0, 0, 0],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_colours_agree() {
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(c.id() as usize, i);
            assert_eq!(Class::from_id(i as u8), Some(*c));
            assert_eq!(c.name(), CLASS_NAMES[i]);
        }
        assert_eq!(Class::from_id(12), None);
        assert_eq!(Class::Void.id(), VOID);
        assert_eq!(Class::Road.name(), "Road");
        // Colours are distinct, so a colour mask can be decoded back to ids.
        for (i, a) in PALETTE.iter().enumerate() {
            assert!(
                PALETTE[i + 1..].iter().all(|b| a != b),
                "colour of class {i} repeats"
            );
        }
    }
}
