//! NNEF, tract's own model format: the float ONNX file translated by tract into
//! a gzipped tar archive, with the edgeseg metadata kept among the model's
//! properties. A board loads it without tract's ONNX translation step
//! (`edgeseg-run --model model.nnef.tgz`).
//!
//! tract 0.23.9 has no NNEF serialiser for the ONNX `QuantizeLinear` it reads
//! from our int8 files, so int8 models stay ONNX; [`to_nnef`] says so.

use std::path::Path;

use tract_onnx::WithOnnx;
use tract_onnx::prelude::*;

use crate::error::{Error, Result};

fn tract_error(what: &str) -> impl FnOnce(TractError) -> Error + '_ {
    move |e| Error::Onnx {
        what: what.into(),
        message: format!("{e:#}"),
    }
}

/// Translates the bytes of an edgeseg ONNX file into a gzipped NNEF archive;
/// `what` names the model in errors.
pub fn to_nnef(onnx: &[u8], what: &str) -> Result<Vec<u8>> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .map_err(tract_error(what))?;
    // Metadata errors surface now, not on the board.
    firmware::engine::typed_model_info(&model)?;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let gz = tract_nnef::nnef()
        .with_onnx()
        .write_to_tar_with_config(&model, gz, false, true)
        .map_err(|e| Error::Onnx {
            what: what.into(),
            message: format!("tract cannot write this model as NNEF: {e:#}"),
        })?;
    gz.finish().map_err(|e| Error::Onnx {
        what: what.into(),
        message: format!("compressing the NNEF archive: {e}"),
    })
}

/// Reads the ONNX file `onnx` and writes its NNEF translation to `out`
/// (through a temporary file); returns the archive's size in bytes.
pub fn write_nnef(onnx: &Path, out: &Path) -> Result<u64> {
    let bytes = std::fs::read(onnx).map_err(|source| Error::Io {
        path: onnx.to_path_buf(),
        source,
    })?;
    let archive = to_nnef(&bytes, &onnx.display().to_string())?;
    crate::io::write_atomic(out, &archive)?;
    Ok(archive.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::to_model;
    use crate::quant::tests::{images, small_graph};
    use crate::quant::{QuantOptions, placeholder_info, quantize};
    use firmware::engine::Engine;

    /// The NNEF archive of a float model loads with the same metadata and
    /// computes the same logits as the ONNX file; an int8 model is refused
    /// with tract's reason.
    #[test]
    fn nnef_archives_run_like_their_onnx_source() {
        let dir = tempfile::tempdir().unwrap();
        let g = small_graph();
        let mut info = placeholder_info(&g);
        info.architecture = "nnef-test".into();
        info.val_miou = 0.5;
        let calib = images(1, 3, g.input_shape());
        let float = prost::Message::encode_to_vec(&to_model(&g, &info));
        let (int8, _) = quantize(&g, &info, &calib, QuantOptions::default()).unwrap();
        let int8 = prost::Message::encode_to_vec(&int8);
        let x = &images(5, 1, g.input_shape())[0];
        let onnx_path = dir.path().join("float.onnx");
        std::fs::write(&onnx_path, &float).unwrap();
        let nnef_path = dir.path().join("float.nnef.tgz");
        let bytes = write_nnef(&onnx_path, &nnef_path).unwrap();
        assert!(bytes > 0 && firmware::engine::is_nnef(&nnef_path));
        let mut a = Engine::load(&onnx_path).unwrap();
        let mut b = Engine::load(&nnef_path).unwrap();
        assert_eq!(a.info(), b.info(), "metadata survives");
        let (la, lb) = (a.run(x).unwrap().to_vec(), b.run(x).unwrap().to_vec());
        let max = la
            .iter()
            .zip(&lb)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-5, "max |diff| {max}");
        // The engine reuses its buffers: a second run gives the same logits.
        assert_eq!(b.run(x).unwrap(), &lb[..]);

        let err = to_nnef(&int8, "int8.onnx").unwrap_err().to_string();
        assert!(err.contains("int8.onnx") && err.contains("NNEF"), "{err}");

        let garbage = dir.path().join("garbage.nnef.tgz");
        std::fs::write(&garbage, b"not an archive").unwrap();
        let err = Engine::load(&garbage).unwrap_err().to_string();
        assert!(err.contains("garbage.nnef.tgz"), "{err}");
    }
}
