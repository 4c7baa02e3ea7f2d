//! The model metadata reader on arbitrary key/value pairs, as a model file's
//! `metadata_props` carry them: no input may panic; what it accepts is
//! consistent (a colour per class, positive deviations), and writing it back
//! and reading it again gives the same pairs.

use firmware::model_info::ModelInfo;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        // One `key=value` pair per line.
        let props: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let Ok(info) = ModelInfo::from_props(props.iter().copied()) else {
            return;
        };
        assert!(!info.class_names.is_empty());
        assert_eq!(info.palette.len(), info.class_names.len());
        assert!(info.std.iter().all(|&s| s > 0.0 && s.is_finite()));
        let written = info.to_props();
        let again = ModelInfo::from_props(written.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .expect("what was read writes back readable");
        assert_eq!(again.to_props(), written);
    });
}
