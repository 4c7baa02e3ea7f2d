//! The `edgeseg` command line, run as a user runs it.

use std::path::Path;
use std::process::Command;

fn edgeseg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgeseg"))
        .args(args)
        .output()
        .expect("edgeseg runs")
}

fn pngs(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The README's synth command, at a smaller size.
#[test]
fn synth_writes_the_camvid_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let out_str = out.to_str().unwrap();
    let run = edgeseg(&[
        "synth", "--out", out_str, "--train", "8", "--val", "2", "--size", "120x90",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("wrote 8 training and 2 validation scenes of 120x90"),
        "{stdout}"
    );
    assert!(stdout.contains("Road"), "{stdout}");
    for (split, n) in [("train", 8), ("val", 2)] {
        let images = pngs(&out.join(split));
        assert_eq!(images.len(), n);
        assert_eq!(
            images,
            pngs(&out.join(format!("{split}annot"))),
            "image and label names differ"
        );
        for name in images {
            let img = image::open(out.join(split).join(&name)).unwrap();
            let lab = image::open(out.join(format!("{split}annot")).join(&name)).unwrap();
            assert_eq!(img.color(), image::ColorType::Rgb8);
            assert_eq!(lab.color(), image::ColorType::L8);
            assert_eq!((img.width(), img.height()), (120, 90));
            assert_eq!((lab.width(), lab.height()), (120, 90));
            assert!(lab.into_luma8().pixels().all(|p| p.0[0] <= firmware::VOID));
        }
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("synth.json")).unwrap()).unwrap();
    assert_eq!(meta["classes"][3], "Road");
    // Running again with the same seed rewrites identical files.
    let first = std::fs::read(out.join("train/synth_000003.png")).unwrap();
    assert!(
        edgeseg(&[
            "synth", "--out", out_str, "--train", "4", "--val", "0", "--size", "120x90", "-q"
        ])
        .status
        .success()
    );
    assert_eq!(
        first,
        std::fs::read(out.join("train/synth_000003.png")).unwrap()
    );
}

#[test]
fn bad_size_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = edgeseg(&[
        "synth",
        "--out",
        dir.path().to_str().unwrap(),
        "--size",
        "480by360",
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("--size") && err.contains("WIDTHxHEIGHT"),
        "{err}"
    );
}

#[test]
fn bad_option_values_name_the_flag_and_what_it_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let quantize = &[
        "quantize", "--model", "m.onnx", "--calib", "c", "--out", "q.onnx",
    ][..];
    for (args, flag, expected) in [
        (
            &["train", "--out", out, "--class-weights", "1,x"][..],
            "--class-weights",
            "sqrt-median",
        ),
        (
            &["train", "--out", out, "--loss", "ce+hinge"],
            "--loss",
            "ce+0.5*dice",
        ),
        (
            &["train", "--out", out, "--val-every", "0"],
            "--val-every",
            "0",
        ),
        (
            &[quantize, &["--calibration", "42"][..]].concat()[..],
            "--calibration",
            "minmax or a percentile",
        ),
        (
            &[quantize, &["--activations", "i4"][..]].concat()[..],
            "--activations",
            "i8 or u8",
        ),
    ] {
        let run = edgeseg(args);
        assert_eq!(run.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains(flag) && err.contains(expected),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.path().join("run").exists(), "nothing is written");
}

#[test]
fn unwritable_output_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let run = edgeseg(&[
        "synth",
        "--out",
        file.to_str().unwrap(),
        "--train",
        "1",
        "--val",
        "0",
        "--size",
        "16x16",
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("not-a-dir"), "{err}");
}

/// `edgeseg train` then `edgeseg eval` on a tiny synthetic run, as the README shows.
#[test]
fn train_then_eval_writes_the_run_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_str = run.to_str().unwrap();
    let out = edgeseg(&[
        "train",
        "--model",
        "unet",
        "--base-width",
        "4",
        "--size",
        "40x32",
        "--epochs",
        "2",
        "--batch",
        "4",
        "--synthetic-train",
        "8",
        "--synthetic-val",
        "3",
        "--loss",
        "ce+0.5*dice",
        "--class-weights",
        "median",
        "--out",
        run_str,
        "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("epoch   2/2") && stdout.contains("val mIoU"),
        "{stdout}"
    );
    for f in [
        "config.json",
        "best.bpk",
        "last.bpk",
        "metrics.csv",
        "curves.png",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let json = dir.path().join("eval.json");
    let out = edgeseg(&[
        "eval",
        "--run",
        run_str,
        "--split",
        "val",
        "--json",
        json.to_str().unwrap(),
        "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Pedestrian") && table.contains("mIoU"),
        "{table}"
    );
    // What was scored is said, so a figure cannot pass for another protocol.
    assert!(
        table.contains("scored 3 frames: the val split of synthetic scenes"),
        "{table}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for key in [
        "miou",
        "pixel_accuracy",
        "class_accuracy",
        "mean_dice",
        "per_class_iou",
        "confusion",
        "images",
    ] {
        assert!(!report[key].is_null(), "{key} missing from {report}");
    }
    assert_eq!(report["images"], 3);
    assert_eq!(report["scored"], "the val split of synthetic scenes");
    assert_eq!(report["confusion"].as_array().unwrap().len(), 11);
    // The eval mIoU is the one training recorded for its best epoch.
    let state: serde_json::Value = run_state(&run);
    let (a, b) = (
        report["miou"].as_f64().unwrap(),
        state["best_miou"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    // Predict on a synthetic picture of another size, with a grid of validation samples.
    let image = dir.path().join("street.png");
    let mut rgb = vec![0; 3 * 70 * 50];
    let mut labels = vec![0; 70 * 50];
    firmware::synth::render_scene(5, 70, 50, &mut rgb, &mut labels).unwrap();
    image::RgbImage::from_raw(70, 50, rgb)
        .unwrap()
        .save(&image)
        .unwrap();
    let pred = dir.path().join("pred");
    let out = edgeseg(&[
        "predict",
        "--run",
        run_str,
        image.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
        "--grid",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mask = image::open(pred.join("street_mask.png")).unwrap();
    assert_eq!(
        (mask.width(), mask.height(), mask.color()),
        (70, 50, image::ColorType::L8)
    );
    assert!(
        mask.into_luma8()
            .pixels()
            .all(|p| (p.0[0] as usize) < firmware::NUM_CLASSES)
    );
    for f in ["street_color.png", "street_overlay.png"] {
        assert_eq!(image::open(pred.join(f)).unwrap().width(), 70, "{f}");
    }
    let grid = image::open(pred.join("grid.png")).unwrap();
    assert_eq!(grid.width(), 3 * 240 + 2 * 4, "three columns");
    // A missing run folder is named in the error.
    let out = edgeseg(&["eval", "--run", dir.path().join("nope").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));

    // Export, then quantise with the prediction folder's pictures as calibration.
    let onnx = dir.path().join("model.onnx");
    let out = edgeseg(&["export", "--run", run_str, "--out", onnx.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("argmax agreement 100.0000%"), "{stdout}");
    let int8 = dir.path().join("model.int8.onnx");
    let out = edgeseg(&[
        "quantize",
        "--model",
        onnx.to_str().unwrap(),
        "--calib",
        pred.to_str().unwrap(),
        "--out",
        int8.to_str().unwrap(),
        "--eval-images",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mean IoU") && stdout.contains("run on int8"),
        "{stdout}"
    );
    let info = firmware::engine::Engine::load(&int8)
        .unwrap()
        .info()
        .clone();
    assert_eq!(info.precision, "int8");
    assert!(std::fs::metadata(&int8).unwrap().len() < std::fs::metadata(&onnx).unwrap().len() / 2);
    // Calibration from a folder without pictures is a clear error naming it.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = edgeseg(&[
        "quantize",
        "--model",
        onnx.to_str().unwrap(),
        "--calib",
        empty.to_str().unwrap(),
        "--out",
        dir.path().join("x.onnx").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("empty") && stderr.contains("no PNG"),
        "{stderr}"
    );
}

/// `edgeseg demo --serve`: after the report, the drive keeps streaming to a
/// live view whose statistics count up.
#[test]
fn demo_serve_keeps_a_live_view_open() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    /// Kills the demo however the test ends (it would serve forever).
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeseg"))
        .args(["-q", "demo", "--out", out.to_str().unwrap()])
        .args([
            "--train-minutes",
            "0.05",
            "--train-scenes",
            "6",
            "--val-scenes",
            "2",
        ])
        .args(["--size", "64x48", "--camera", "96x72", "--frames", "3"])
        .args(["--serve", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let child = KillOnDrop(child);
    let mut addr = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("live view on http://") {
            addr = Some(rest.split('/').next().unwrap().to_string());
            break;
        }
    }
    let addr = addr.expect("the demo prints the live view's address");
    assert!(out.join("report.json").exists(), "the report comes first");
    let get = || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET /stats.json HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()
    };
    // Patient on a loaded machine: up to a minute to see five frames.
    let mut frames = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(60) {
        frames = get()["frames"].as_u64().unwrap_or(0);
        if frames >= 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(child);
    assert!(frames >= 5, "the live view kept streaming: {frames} frames");
}

/// A small synthetic training command into `out`, with `extra` flags.
fn tiny_train(out: &Path, epochs: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--model",
        "unet",
        "--base-width",
        "4",
        "--size",
        "40x32",
        "--batch",
        "4",
        "--synthetic-train",
        "8",
        "--synthetic-val",
        "2",
        "--workers",
        "1",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--epochs".into(), epochs.to_string()]);
    args.extend(["--out".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The run folder's `state.json`.
fn run_state(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("state.json")).unwrap()).unwrap()
}

fn run_files(run: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// `train --out` on a trained run refuses without `--resume` or `--overwrite`,
/// and a command that fails validation never touches it.
#[test]
fn train_never_overwrites_a_run_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = tiny_train(&run, 2, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = edgeseg(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = run_files(&run);

    // The same command again: refused, nothing written.
    let out = edgeseg(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already holds a run (2 trained epochs)")
            && err.contains("--resume")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(run_files(&run), before);

    // --overwrite with a bad dataset (a label value of 200): the error names the
    // file and the run is untouched.
    let data = dir.path().join("data");
    for split in ["train", "val"] {
        for (sub, pixel) in [
            (split.to_string(), [90u8, 90, 90]),
            (format!("{split}annot"), [3, 3, 3]),
        ] {
            std::fs::create_dir_all(data.join(&sub)).unwrap();
            let mut img = image::RgbImage::from_pixel(40, 32, image::Rgb(pixel));
            if sub == "trainannot" {
                img.put_pixel(3, 4, image::Rgb([200, 200, 200]));
            }
            if sub.ends_with("annot") {
                image::DynamicImage::ImageRgb8(img)
                    .into_luma8()
                    .save(data.join(&sub).join("a.png"))
                    .unwrap();
            } else {
                img.save(data.join(&sub).join("a.png")).unwrap();
            }
        }
    }
    let bad = tiny_train(&run, 2, &["--overwrite", "--data", data.to_str().unwrap()]);
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    let out = edgeseg(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("label value 200") && err.contains("a.png"),
        "{err}"
    );
    assert_eq!(
        run_files(&run),
        before,
        "a failed --overwrite left the run as it was"
    );

    // A folder holding something else is never taken, even with --overwrite.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let args = tiny_train(&other, 1, &["--overwrite"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = edgeseg(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a run folder"));
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);

    // An explicit --overwrite replaces the run.
    let args = tiny_train(&run, 1, &["--overwrite"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = edgeseg(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value = run_state(&run);
    assert_eq!(state["epochs_done"], 1);
}

/// `kill -9` of a real training process at many moments always leaves a run
/// that `--resume` continues exactly: the same epochs, none trained twice, the
/// same losses as a run that was never interrupted.
#[cfg(unix)]
#[test]
fn killed_training_resumes_exactly() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let epochs = 8;
    let reference = dir.path().join("reference");
    let args = tiny_train(&reference, epochs, &[]);
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_edgeseg"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = t.elapsed();
    let history = |run: &Path| -> Vec<(u64, f64)> {
        let state: serde_json::Value = run_state(run);
        state["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["epoch"].as_u64().unwrap(),
                    r["train_loss"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let expected = history(&reference);
    assert_eq!(expected.len(), epochs);

    // Kill at three kinds of moment in turn, resuming each time until an
    // attempt finishes: during start-up (a tenth of the uninterrupted run's
    // time), as soon as a new epoch is recorded (its checkpoints just written,
    // the next epoch starting), and half an epoch's share later (mid-epoch).
    // Moments tied to the run's own progress rather than to guessed times:
    // kills that only guessed missed every first checkpoint once start-up
    // outgrew an epoch, and interrupted nothing on a machine faster than
    // during the reference run.
    let run = dir.path().join("run");
    // Epochs the run's state records (its state is renamed into place, so a
    // read sees a whole one).
    let done = |run: &Path| -> usize {
        std::fs::read(run.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|s| s["history"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let (mut kills, mut attempt, mut progress) = (0, 0, Vec::new());
    loop {
        let before = done(&run);
        let resume = run.join("config.json").is_file();
        let args = tiny_train(&run, epochs, if resume { &["--resume"] } else { &[] });
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgeseg"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        match attempt % 3 {
            0 => std::thread::sleep(whole / 10),
            kind => {
                let waiting = Instant::now();
                while child.try_wait().unwrap().is_none()
                    && done(&run) == before
                    && waiting.elapsed() < 20 * whole
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                if kind == 2 {
                    std::thread::sleep(whole / (2 * epochs as u32));
                }
            }
        }
        attempt += 1;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
        } else {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if history(&run).len() == epochs {
                break;
            }
        }
        assert!(attempt < 200, "no progress after {attempt} attempts");
        // Every instant leaves a consistent run: the state's checkpoints exist.
        if !run.join("state.json").is_file() {
            progress.push(0);
            continue;
        }
        {
            let state: serde_json::Value = run_state(&run);
            if let Some(c) = state["checkpoints"].as_object() {
                for f in c.values() {
                    assert!(run.join(f.as_str().unwrap()).is_file(), "{f} missing");
                }
            }
        }
        progress.push(history(&run).len());
    }
    assert!(
        kills >= 3,
        "only {kills} kills: the test did not interrupt training"
    );
    let got = history(&run);
    let epochs_seen: Vec<u64> = got.iter().map(|r| r.0).collect();
    assert_eq!(epochs_seen, (1..=epochs as u64).collect::<Vec<_>>());
    for ((e, a), (_, b)) in got.iter().zip(&expected) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "epoch {e}: loss {a} after {kills} kills, {b} uninterrupted"
        );
    }
    eprintln!(
        "{kills} kills over {attempt} starts (epochs done after each: {progress:?}); \
         losses match the uninterrupted run"
    );
}

/// With `--time-limit` and no `--epochs`, the budget alone ends training: the
/// run goes past the 10 epochs a plain `train` runs (the README's 45-minute
/// CamVid command once stopped after 10 epochs in under two minutes).
#[test]
fn a_time_limit_without_epochs_trains_until_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = tiny_train(&run, 1, &["--time-limit", "0.25"]);
    let at = args.iter().position(|a| a == "--epochs").unwrap();
    args.drain(at..at + 2);
    let started = std::time::Instant::now();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = edgeseg(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value = run_state(&run);
    let epochs = state["epochs_done"].as_u64().unwrap();
    // The budget is 15 s; an epoch of 8 scenes at 40x32 takes well under one.
    assert!(epochs > 10, "{epochs} epochs in {:?}", started.elapsed());
    assert!(
        started.elapsed().as_secs_f64() >= 15.0,
        "{:?}",
        started.elapsed()
    );
}
