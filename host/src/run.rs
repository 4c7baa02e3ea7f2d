//! The run folder a trained model lives in, and the records that describe it.
//!
//! A run folder holds `config.json` (everything needed to rebuild the model and
//! continue training), `state.json` (epochs done, history, and which checkpoint
//! files are current), the checkpoints, `metrics.csv` (one row per epoch) and
//! `curves.png`.
//!
//! # Consistent at every instant
//! Each epoch's checkpoints are written under names that carry the epoch
//! (`last-e00012.bpk`, `optimizer-e00012.bpk`, `best-e00009.bpk`), each to a
//! temporary file renamed into place. Then `state.json`, the manifest that names
//! them, is renamed over the old one: that rename is the commit. Only after it
//! are the previous epoch's files removed and the stable names `best.bpk` and
//! `last.bpk` pointed at the new files (hard links, or copies where the file
//! system has none). So a crash or `kill -9` at any moment leaves a
//! `state.json` whose checkpoints exist and belong to it; whatever a crash left
//! beyond it (newer epoch files, our temporaries) is removed by [`RunDir::tidy`]
//! when the run is resumed. Readers go through the manifest too
//! ([`RunDir::weights_path`]), so `best.bpk` means the manifest's best even
//! while its stable name is being replaced.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use firmware::Size;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::Model;

/// How [`crate::train::train`] treats the run folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run: the folder must be new, empty, or a run that never finished
    /// an epoch. A run with trained epochs is refused.
    New,
    /// Continue the run in the folder from its last committed epoch.
    Resume,
    /// A new run that replaces the run in the folder (its files are removed
    /// once the new run's inputs are validated; other files are kept).
    Overwrite,
}

/// One row of `metrics.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Validation mean IoU; `None` in epochs that were not validated
    /// (`--val-every`).
    pub val_miou: Option<f64>,
    /// Validation pixel accuracy; `None` in epochs that were not validated.
    pub val_pixel_accuracy: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall time of the epoch (training and validation), seconds.
    pub seconds: f64,
    /// Size of the training samples (half the run's size in the epochs of
    /// progressive resizing); absent in runs from before it was recorded.
    #[serde(default)]
    pub train_size: Option<Size>,
}

/// The checkpoint files an epoch committed, by file name in the run folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoints {
    /// Weights after the last committed epoch.
    pub last: String,
    /// Optimiser state after the last committed epoch.
    pub optimizer: String,
    /// Weights with the best validation mIoU.
    pub best: String,
}

/// Progress of a run, saved as `state.json` after every epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Best validation mIoU so far.
    pub best_miou: f64,
    /// Epoch of the best validation mIoU.
    pub best_epoch: usize,
    /// Class weights used by the loss.
    pub class_weights: Vec<f32>,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// The current checkpoint files; `None` before the first epoch, and in runs
    /// from before checkpoints carried their epoch (`best.bpk`, `last.bpk`,
    /// `optimizer.bpk`).
    #[serde(default)]
    pub checkpoints: Option<Checkpoints>,
}

/// Names of the files a run writes (besides epoch-tagged checkpoints and
/// temporaries); [`Start::Overwrite`] removes exactly these.
const RUN_FILES: [&str; 7] = [
    "config.json",
    "state.json",
    "best.bpk",
    "last.bpk",
    "optimizer.bpk",
    "metrics.csv",
    "curves.png",
];

/// Whether `name` is an epoch-tagged checkpoint (`last-e00012.bpk`).
fn is_epoch_checkpoint(name: &str) -> bool {
    ["last-e", "best-e", "optimizer-e"].iter().any(|prefix| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".bpk"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Whether `name` is one of our temporary files (see `firmware::fsio`).
fn is_temporary(name: &str) -> bool {
    name.starts_with(".edgeseg-") && name.ends_with(".tmp")
}

/// The files of a run folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The folder.
    pub path: PathBuf,
}

impl RunDir {
    /// A run folder at `path` (not created until something is saved).
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T> {
        let path = self.file(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
            path,
            what: format!("not a valid {name}: {e}"),
        })
    }

    pub(crate) fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        write_atomic(
            &self.file(name),
            &serde_json::to_vec_pretty(value).expect("serialisable"),
        )
    }

    /// The training configuration.
    pub fn config(&self) -> Result<TrainConfig> {
        self.read_json("config.json")
    }

    /// The progress record.
    pub fn state(&self) -> Result<RunState> {
        self.read_json("state.json")
    }

    /// The file behind weights `name`: `best.bpk` and `last.bpk` are the
    /// checkpoints `state.json` names; any other name is a file in the folder.
    pub fn weights_path(&self, name: &str) -> PathBuf {
        let current = self.state().ok().and_then(|s| s.checkpoints);
        match (name, current) {
            ("best.bpk", Some(c)) => self.file(&c.best),
            ("last.bpk", Some(c)) => self.file(&c.last),
            _ => self.file(name),
        }
    }

    /// Loads weights `name` (`best.bpk` or `last.bpk`, see
    /// [`RunDir::weights_path`]) into the model `config` describes.
    pub fn load_model(&self, name: &str, device: &Device) -> Result<Model> {
        let config = self.config()?;
        let path = self.weights_path(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |e: String| Error::BadFile {
            path: path.clone(),
            what: format!("not a loadable checkpoint: {e}"),
        };
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| bad(format!("{e:?}")))?;
        config
            .model
            .init(device)
            .try_load_record(record)
            .map_err(|e| bad(format!("{e:?}")))
    }

    /// The names in the folder (empty if it does not exist).
    fn names(&self) -> Result<Vec<String>> {
        match std::fs::read_dir(&self.path) {
            Ok(entries) => entries
                .map(|e| {
                    e.map(|e| e.file_name().to_string_lossy().into_owned())
                        .map_err(|e| Error::io(&self.path, e))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    /// Checks that a new run may start here, before anything is written:
    /// the folder is new or empty, or holds a run that never committed an
    /// epoch, or holds a run and `start` is [`Start::Overwrite`]. A folder
    /// with other files is never taken over.
    pub(crate) fn check_new(&self, start: Start) -> Result<()> {
        if self.path.exists() && !self.path.is_dir() {
            return Err(Error::BadFile {
                path: self.path.clone(),
                what: "--out must be a folder; this is a file".into(),
            });
        }
        let names = self.names()?;
        let ours = |n: &String| {
            RUN_FILES.contains(&n.as_str()) || is_epoch_checkpoint(n) || is_temporary(n)
        };
        if let Some(other) = names.iter().find(|n| !ours(n)) {
            return Err(Error::BadFile {
                path: self.path.clone(),
                what: format!(
                    "not empty and not a run folder (it holds {other}); choose a new or empty folder"
                ),
            });
        }
        if names.is_empty() || start == Start::Overwrite {
            return Ok(());
        }
        let trained = match self.state() {
            Ok(state) => state.epochs_done > 0,
            // Files of a run but no readable state: checkpoints mean work.
            Err(_) => names
                .iter()
                .any(|n| n.ends_with(".bpk") || n == "metrics.csv"),
        };
        if trained {
            let done = self
                .state()
                .map(|s| format!("{} trained epochs", s.epochs_done))
                .unwrap_or_else(|_| "checkpoints".into());
            return Err(Error::BadFile {
                path: self.path.clone(),
                what: format!(
                    "already holds a run ({done}); continue it with --resume, or replace it \
                     with --overwrite"
                ),
            });
        }
        Ok(())
    }

    /// Removes the files of a run (and only those) so a new one can start.
    pub(crate) fn clear(&self) -> Result<()> {
        for name in self.names()? {
            if RUN_FILES.contains(&name.as_str())
                || is_epoch_checkpoint(&name)
                || is_temporary(&name)
            {
                let path = self.file(&name);
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Starts a new run: `config.json`, then `state.json` with no epoch done.
    pub(crate) fn begin(&self, config: &TrainConfig) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| Error::io(&self.path, e))?;
        self.write_json("config.json", config)?;
        self.write_json("state.json", &RunState::default())
    }

    /// Commits an epoch: writes its checkpoints under epoch-tagged names, then
    /// `state` naming them (the commit), then removes the files it replaces and
    /// points `best.bpk` and `last.bpk` at the new ones. `best` is set when
    /// this epoch's weights are the best so far.
    pub(crate) fn commit(
        &self,
        state: &mut RunState,
        weights: &[u8],
        optimizer: &[u8],
        best: bool,
    ) -> Result<()> {
        let epoch = state.epochs_done;
        let last = format!("last-e{epoch:05}.bpk");
        let optim = format!("optimizer-e{epoch:05}.bpk");
        write_atomic(&self.file(&last), weights)?;
        write_atomic(&self.file(&optim), optimizer)?;
        let best_name = if best {
            let name = format!("best-e{epoch:05}.bpk");
            write_atomic(&self.file(&name), weights)?;
            name
        } else {
            match &state.checkpoints {
                Some(c) => c.best.clone(),
                // A run from before epoch-tagged checkpoints: keep its best.
                None => {
                    let name = format!("best-e{:05}.bpk", state.best_epoch);
                    let old = self.file("best.bpk");
                    let bytes = std::fs::read(&old).map_err(|e| Error::io(&old, e))?;
                    write_atomic(&self.file(&name), &bytes)?;
                    name
                }
            }
        };
        state.checkpoints = Some(Checkpoints {
            last,
            optimizer: optim,
            best: best_name,
        });
        self.write_json("state.json", state)?;
        self.tidy(state)
    }

    /// Brings the folder in line with `state`: removes checkpoints it does not
    /// name and our temporaries (what a crash may leave), and points the stable
    /// names `best.bpk` and `last.bpk` at its checkpoints.
    pub(crate) fn tidy(&self, state: &RunState) -> Result<()> {
        let Some(current) = &state.checkpoints else {
            return Ok(());
        };
        let keep = [&current.last, &current.optimizer, &current.best];
        for name in self.names()? {
            let stale = (is_epoch_checkpoint(&name) && !keep.contains(&&name))
                || is_temporary(&name)
                || name == "optimizer.bpk";
            if stale {
                let path = self.file(&name);
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        self.alias("best.bpk", &current.best)?;
        self.alias("last.bpk", &current.last)
    }

    /// Points `alias` at `target` (both in the folder) by replacing it
    /// atomically with a hard link, or with a copy where links fail.
    fn alias(&self, alias: &str, target: &str) -> Result<()> {
        let (from, to) = (self.file(target), self.file(alias));
        let tmp = self.file(&format!(".edgeseg-{alias}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&from, &tmp).is_err() {
            std::fs::copy(&from, &tmp).map_err(|e| Error::io(&from, e))?;
        }
        std::fs::rename(&tmp, &to).map_err(|e| Error::io(&to, e))
    }

    /// The optimiser state file the last committed epoch saved.
    pub(crate) fn optimizer_path(&self, state: &RunState) -> PathBuf {
        match &state.checkpoints {
            Some(c) => self.file(&c.optimizer),
            None => self.file("optimizer.bpk"),
        }
    }

    pub(crate) fn write_metrics_csv(&self, history: &[EpochRecord]) -> Result<()> {
        let mut csv =
            String::from("epoch,train_loss,val_miou,val_pixel_accuracy,lr,seconds,train_size\n");
        for r in history {
            let size = r.train_size.map(|s| s.to_string()).unwrap_or_default();
            let score = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
            csv += &format!(
                "{},{:.6},{},{},{:.3e},{:.2},{size}\n",
                r.epoch,
                r.train_loss,
                score(r.val_miou),
                score(r.val_pixel_accuracy),
                r.lr,
                r.seconds
            );
        }
        write_atomic(&self.file("metrics.csv"), csv.as_bytes())
    }
}

/// The weights of `model` as checkpoint bytes.
pub(crate) fn model_bytes(model: &Model, path: &Path) -> Result<Bytes> {
    model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            what: format!("cannot serialise the model: {e:?}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_our_files() {
        assert!(is_epoch_checkpoint("last-e00012.bpk"));
        assert!(is_epoch_checkpoint("optimizer-e1.bpk"));
        assert!(!is_epoch_checkpoint("last-e.bpk"));
        assert!(!is_epoch_checkpoint("last-e12x.bpk"));
        assert!(!is_epoch_checkpoint("my-last-e12.bpk"));
        assert!(is_temporary(".edgeseg-abc.tmp"));
        assert!(!is_temporary("notes.tmp"));
    }

    #[test]
    fn a_folder_with_other_files_is_never_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("thesis.tex"), "years of work").unwrap();
        let run = RunDir::new(dir.path());
        for start in [Start::New, Start::Overwrite] {
            let err = run.check_new(start).unwrap_err().to_string();
            assert!(
                err.contains("thesis.tex") && err.contains("not a run"),
                "{err}"
            );
        }
        assert!(dir.path().join("thesis.tex").is_file());
        let file = RunDir::new(dir.path().join("thesis.tex"));
        assert!(file.check_new(Start::New).is_err());
        RunDir::new(dir.path().join("new"))
            .check_new(Start::New)
            .unwrap();
    }
}
