//! The synthetic dataset written by `host` reads back through the firmware's
//! statistics as the same scenes the firmware generator draws.

use firmware::stats::Histogram;
use host::synth::{SynthSpec, paths, scene_seed, write_dataset};

#[test]
fn dataset_statistics_match_the_generator() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        train: 6,
        val: 1,
        size: firmware::Size::new(80, 60),
        seed: 42,
    };
    let summary = write_dataset(dir.path(), &spec, &|| {}).unwrap();
    let mut from_files = Histogram::default();
    let mut from_generator = Histogram::default();
    for i in 0..spec.train {
        let (_, lab) = paths(dir.path(), "train", i);
        from_files.add(&image::open(lab).unwrap().into_luma8().into_raw());
        let (mut rgb, mut mask) = (vec![0; 3 * 80 * 60], vec![0; 80 * 60]);
        firmware::synth::render_scene(scene_seed(42, "train", i), 80, 60, &mut rgb, &mut mask)
            .unwrap();
        from_generator.add(&mask);
    }
    assert_eq!(from_files, from_generator);
    assert_eq!(summary.train_fractions, from_files.fractions().to_vec());
}
