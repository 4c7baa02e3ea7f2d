use proptest::prelude::*;

use super::*;
use crate::classes::{Class, NUM_CLASSES, VOID};
use crate::stats::Histogram;

fn scene(seed: u64, w: usize, h: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rgb = vec![0; 3 * w * h];
    let mut labels = vec![0; w * h];
    render_scene(seed, w, h, &mut rgb, &mut labels).unwrap();
    (rgb, labels)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn labels_are_classes_and_sizes_match(seed in any::<u64>(), w in 1usize..96, h in 1usize..72) {
        let (rgb, labels) = scene(seed, w, h);
        prop_assert_eq!(rgb.len(), 3 * w * h);
        prop_assert_eq!(labels.len(), w * h);
        prop_assert!(labels.iter().all(|&l| l <= VOID));
    }

    #[test]
    fn same_seed_same_bytes_other_seed_differs(seed in any::<u64>()) {
        let a = scene(seed, 64, 48);
        let b = scene(seed, 64, 48);
        prop_assert_eq!(&a, &b);
        let c = scene(seed.wrapping_add(1), 64, 48);
        prop_assert_ne!(&a.0, &c.0);
    }

    #[test]
    fn drive_frames_are_deterministic(seed in any::<u64>(), index in 0u64..10_000) {
        let drive = Drive::new(seed);
        let (mut a, mut la) = (vec![0; 3 * 40 * 30], vec![0; 40 * 30]);
        let (mut b, mut lb) = (vec![0; 3 * 40 * 30], vec![0; 40 * 30]);
        drive.render_frame(index, 40, 30, &mut a, &mut la).unwrap();
        Drive::new(seed).render_frame(index, 40, 30, &mut b, &mut lb).unwrap();
        prop_assert_eq!(a, b);
        prop_assert_eq!(la, lb);
    }
}

#[test]
fn every_class_appears_across_a_modest_sample() {
    let mut hist = Histogram::default();
    for seed in 0..24 {
        hist.add(&scene(seed, 240, 180).1);
    }
    for class in Class::ALL {
        assert!(
            hist.counts[class.id() as usize] > 0,
            "{} never appears: {hist:?}",
            class.name()
        );
    }
    assert_eq!(hist.invalid, 0);
    // Road scenes: the big classes dominate as in CamVid.
    let f = hist.fractions();
    for big in [Class::Road, Class::Sky, Class::Building] {
        assert!(
            f[big.id() as usize] > 0.05,
            "{} covers only {}",
            big.name(),
            f[big.id() as usize]
        );
    }
    assert!(f[..NUM_CLASSES].iter().all(|&x| x < 0.6), "{f:?}");
}

#[test]
fn scene_layout_is_a_road_scene() {
    // Sky on top, road at the bottom centre, in (nearly) every scene.
    let (w, h) = (160, 120);
    let mut sky_top = 0;
    let mut road_bottom = 0;
    for seed in 100..140 {
        let (_, labels) = scene(seed, w, h);
        sky_top += (labels[w / 2] == Class::Sky.id()) as u32;
        road_bottom += (labels[(h - 1) * w + w / 2] == Class::Road.id()) as u32;
    }
    assert!(
        sky_top >= 30,
        "sky at the top centre in only {sky_top}/40 scenes"
    );
    assert!(
        road_bottom >= 36,
        "road at the bottom centre in only {road_bottom}/40 scenes"
    );
}

#[test]
fn drive_moves_coherently() {
    // Consecutive frames are much closer to each other than frames far apart,
    // and the camera moves: frames are never identical.
    let drive = Drive::new(5);
    let (w, h) = (96, 72);
    let frame = |i| {
        let (mut rgb, mut l) = (vec![0; 3 * w * h], vec![0; w * h]);
        drive.render_frame(i, w, h, &mut rgb, &mut l).unwrap();
        l
    };
    let diff = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let (f0, f1, f60) = (frame(0), frame(1), frame(60));
    let near = diff(&f0, &f1);
    let far = diff(&f0, &f60);
    assert!(near > 0, "the camera does not move");
    assert!(
        near * 3 < far,
        "consecutive frames differ by {near} pixels, distant ones by {far}"
    );
}

#[test]
fn bad_buffers_are_rejected() {
    let mut rgb = vec![0; 10];
    let mut labels = vec![0; 4];
    assert_eq!(
        render_scene(1, 2, 2, &mut rgb, &mut labels),
        Err(Error::BufferSize {
            expected: 12,
            actual: 10
        })
    );
    assert_eq!(
        render_scene(1, 0, 2, &mut rgb, &mut labels),
        Err(Error::ZeroSize)
    );
    let mut rgb = vec![0; 12];
    let mut labels = vec![0; 5];
    assert_eq!(
        Drive::new(1).render_frame(0, 2, 2, &mut rgb, &mut labels),
        Err(Error::BufferSize {
            expected: 4,
            actual: 5
        })
    );
}
