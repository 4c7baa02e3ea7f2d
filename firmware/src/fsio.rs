//! Writing files so that a crash never leaves a half-written one: the bytes go to
//! a temporary file in the destination folder, which is then renamed over the
//! target. Shared by the runtime's sinks and the workstation tools.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The prefix of this process's temporary files: `.edgeseg-PID-`, so that a
/// later run can tell the leftovers of a dead process ([`remove_stale`]) from
/// a live one's files.
fn prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| format!(".edgeseg-{}-", std::process::id()))
}

/// A temporary-file builder for files that end up as ordinary outputs: readable
/// by others (0644 on Unix) rather than tempfile's private 0600.
pub fn builder() -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix());
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

/// Whether the process `pid` is still running (`/proc` on Linux; elsewhere
/// every other process counts as running, so nothing of a live one is lost).
fn running(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes the temporary files that processes which no longer run left in
/// `dir` (a `kill -9` or power cut mid-write); returns how many. Files of
/// running processes, and everything that is not ours, stay.
pub fn remove_stale(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(".edgeseg-")) else {
            continue;
        };
        if !rest.ends_with(".tmp") {
            continue;
        }
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !running(pid)) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
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
        let mut tmp = builder().tempfile_in(path.parent().unwrap()).unwrap();
        let name = tmp
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(&format!(".edgeseg-{}-", std::process::id())),
            "{name}"
        );
        tmp.write_all(b"x").unwrap();
        drop(tmp);
        // A dead process's leftovers go; a live one's and other files stay.
        let dir = path.parent().unwrap();
        let dead = dir.join(".edgeseg-4000000000-abc.gif.tmp");
        let live = dir.join(format!(".edgeseg-{}-abc.tmp", std::process::id()));
        let other = dir.join(".edgeseg-notes.tmp");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        assert_eq!(remove_stale(dir), 1);
        assert!(!dead.exists() && live.exists() && other.exists());
        let blocked = path.join("below-a-file");
        let (at, _) = write_atomic(&blocked, b"x").unwrap_err();
        assert!(at.starts_with(&path), "{}", at.display());
    }
}
