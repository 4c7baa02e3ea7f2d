//! Label spaces (`firmware::labels`, where the pure parsers live so that they
//! can be fuzzed on their own) and reading them from a dataset's files.

use std::path::Path;

pub use firmware::labels::{CITYSCAPES_TRAIN_IDS, LabelSpace, MaskFormat, decode_mask};

use crate::error::{Error, Result};

/// Reads a `class_dict.csv` (`name,r,g,b` with a header, as shipped with the
/// 32-class CamVid); a class named `void` or `Void` becomes the void value.
pub fn read_class_dict(path: &Path) -> Result<LabelSpace> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    LabelSpace::from_class_dict(&text).map_err(|source| Error::Labels {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_dict_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("class_dict.csv");
        std::fs::write(&path, "name,r,g,b\nSky,128,128,128\nVoid,0,0,0\n").unwrap();
        assert_eq!(read_class_dict(&path).unwrap().names, vec!["Sky"]);
        std::fs::write(&path, "name,r,g,b\nSky,300,0,0\n").unwrap();
        let err = read_class_dict(&path).unwrap_err().to_string();
        assert!(
            err.contains("class_dict.csv") && err.contains("line 2"),
            "{err}"
        );
    }
}
