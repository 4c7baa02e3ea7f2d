//! Writing files so that a crash never leaves a half-written one: the bytes go to
//! a temporary file in the destination folder, which is then renamed over the
//! target. Shared by the runtime's sinks and the workstation tools.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A temporary-file builder for files that end up as ordinary outputs: readable
/// by others (0644 on Unix) rather than tempfile's private 0600.
pub fn builder() -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".edgeseg-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    builder
}

/// Writes `bytes` to `path` atomically, creating the parent folder if needed.
/// On failure, returns the path that could not be written and why.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fn at(p: &Path) -> impl FnOnce(std::io::Error) -> (PathBuf, std::io::Error) + '_ {
        move |e| (p.to_path_buf(), e)
    }
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let mut tmp = builder().suffix(".tmp").tempfile_in(dir).map_err(at(dir))?;
    tmp.write_all(bytes).map_err(at(tmp.path()))?;
    tmp.as_file().sync_data().map_err(at(tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| (path.to_path_buf(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_names_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o044, 0o044, "readable by others: {mode:o}");
        }
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
        let blocked = path.join("below-a-file");
        let (at, _) = write_atomic(&blocked, b"x").unwrap_err();
        assert!(at.starts_with(&path), "{}", at.display());
    }
}
