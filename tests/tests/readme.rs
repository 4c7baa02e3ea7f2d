//! Every command in the README's `sh` blocks runs, in order, at small sizes, in
//! a scratch folder: `edgeseg` (for `cargo run --release -p host --`) and
//! `edgeseg-run` as built for this test run; camera pipes (`rpicam-vid`,
//! `ffmpeg`) are replaced by frames of the same format and size; commands that
//! need a board or CI's cross toolchain must appear verbatim in `.ci/run` or
//! are named as needing a board. A command the test does not know fails it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use firmware::Size;
use firmware::frame::PixelFormat;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shell commands of the README's `sh` blocks, continuation lines joined.
fn commands(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block || line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let line = line.trim();
        match line.strip_suffix('\\') {
            Some(part) => current += &format!("{} ", part.trim()),
            None => {
                current += line;
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// Splits a command into words as a shell would (quotes, no expansions).
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in command.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// Sets `flag` to `value` (replacing its value, or appending both).
fn set(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.into(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
}

fn remove(args: &mut Vec<String>, flag: &str) {
    if let Some(i) = args.iter().position(|a| a == flag) {
        args.drain(i..i + 2);
    }
}

/// `edgeseg` arguments at small sizes.
fn small_edgeseg(mut args: Vec<String>) -> Vec<String> {
    match args[0].as_str() {
        "demo" => {
            for (flag, value) in [
                ("--train-minutes", "0.05"),
                ("--train-scenes", "6"),
                ("--val-scenes", "3"),
                ("--frames", "3"),
                ("--size", "64x48"),
                ("--camera", "96x72"),
            ] {
                set(&mut args, flag, value);
            }
        }
        "synth" => {
            set(&mut args, "--train", "6");
            set(&mut args, "--val", "3");
            set(&mut args, "--size", "96x72");
        }
        "train" => {
            remove(&mut args, "--time-limit");
            set(&mut args, "--size", "64x48");
            set(&mut args, "--epochs", "1");
            set(&mut args, "--batch", "2");
        }
        "export" => set(&mut args, "--check-images", "1"),
        "quantize" => {
            set(&mut args, "--calib-images", "2");
            set(&mut args, "--eval-images", "2");
        }
        _ => {}
    }
    args
}

/// `edgeseg-run` arguments at small sizes: a few frames, local addresses, and
/// a camera command (`--exec`) replaced by one that plays frames of its format.
fn small_run(mut args: Vec<String>, cwd: &Path) -> Vec<String> {
    if let Some(i) = args.iter().position(|a| a == "--exec") {
        let recorded = cwd.join("camera.raw");
        std::fs::write(&recorded, camera_bytes(&words(&args[i + 1]))).unwrap();
        args[i + 1] = format!("cat {}", recorded.display());
    }
    for a in args.iter_mut() {
        if a.starts_with("http:") {
            *a = "http:127.0.0.1:0".into();
        } else if a.starts_with("tcp:") || a.starts_with("udp:") {
            // Nobody listens there: frames are counted as dropped.
            *a = format!("{}127.0.0.1:9", &a[..4]);
        }
    }
    if !args.iter().any(|a| a == "--frames") {
        args.extend(["--frames".into(), "2".into()]);
    }
    args
}

/// The value after `flag` in `args`.
fn value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args.iter().position(|a| a == flag).unwrap_or_else(|| {
        panic!("{flag} missing in {args:?}");
    });
    &args[i + 1]
}

/// Two frames of what a camera command (`rpicam-vid`, `ffmpeg`) writes.
fn camera_bytes(args: &[String]) -> Vec<u8> {
    let mut rng = firmware::rng::Rng::new(3);
    let noise = |n: usize, rng: &mut firmware::rng::Rng| -> Vec<u8> {
        (0..n).map(|_| (rng.f32() * 255.0) as u8).collect()
    };
    match args[0].as_str() {
        "rpicam-vid" => {
            let w: u32 = value(args, "--width").parse().unwrap();
            let h: u32 = value(args, "--height").parse().unwrap();
            match value(args, "--codec") {
                "yuv420" => {
                    let f = PixelFormat::I420;
                    noise(2 * f.frame_len(h, f.camera_stride(w)), &mut rng)
                }
                "mjpeg" => {
                    let mut out = Vec::new();
                    for _ in 0..2 {
                        let rgb =
                            image::RgbImage::from_raw(w, h, noise((3 * w * h) as usize, &mut rng))
                                .unwrap();
                        image::codecs::jpeg::JpegEncoder::new(&mut out)
                            .encode_image(&rgb)
                            .unwrap();
                    }
                    out
                }
                other => panic!("rpicam-vid --codec {other}: not emulated"),
            }
        }
        "ffmpeg" => {
            assert_eq!(value(args, "-pix_fmt"), "rgb24", "{args:?}");
            let size: Size = value(args, "-s").parse().unwrap();
            noise(2 * 3 * size.area(), &mut rng)
        }
        other => panic!("{other}: not a camera command the test knows"),
    }
}

fn run(program: &Path, args: &[String], cwd: &Path, stdin: Vec<u8>, what: &str) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "README command failed ({}): {what}\nran: {} {args:?}\n{}\n{}",
        out.status,
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `edgeseg` and `edgeseg-run` of this build (`cargo test --workspace` builds
/// both; after `cargo test -p tests` they are brought up to date here).
fn binaries() -> (PathBuf, PathBuf) {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    // The same selection and features as `cargo test --workspace`, which has
    // built both binaries already (a plain `cargo build` would resolve features
    // without dev-dependencies and rebuild tract).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "-q", "--workspace", "--no-run"])
        .current_dir(root())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "building edgeseg and edgeseg-run");
    (dir.join("edgeseg"), dir.join("edgeseg-run"))
}

#[test]
fn the_readme_commands_run() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let commands = commands(&readme);
    assert!(commands.len() >= 15, "{commands:#?}");
    let (edgeseg, edgeseg_run) = binaries();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    // Stand-ins for what the reader brings: CamVid (here a small synthetic
    // set in its layout) and a street picture.
    let synth = |out: &str| {
        let args = [
            "synth", "--out", out, "--train", "6", "--val", "3", "--size", "96x72",
        ];
        run(&edgeseg, &args.map(String::from), cwd, Vec::new(), "setup");
    };
    synth("data/CamVid");
    std::fs::copy(
        cwd.join("data/CamVid/val")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
        cwd.join("street.png"),
    )
    .unwrap();

    let (mut ran, mut in_ci, mut board) = (0, 0, Vec::new());
    for command in &commands {
        let stages: Vec<Vec<String>> = command.split(" | ").map(words).collect();
        let last = stages.last().unwrap();
        match last[0].as_str() {
            "cargo" if last[..3] == ["cargo", "run", "--release"] => {
                assert_eq!(last[3..6], ["-p", "host", "--"], "{command}");
                run(
                    &edgeseg,
                    &small_edgeseg(last[6..].to_vec()),
                    cwd,
                    Vec::new(),
                    command,
                );
                ran += 1;
            }
            "edgeseg-run" => {
                let stdin = match stages.len() {
                    1 => Vec::new(),
                    2 => camera_bytes(&stages[0]),
                    _ => panic!("{command}: one pipe at most"),
                };
                run(
                    &edgeseg_run,
                    &small_run(last[1..].to_vec(), cwd),
                    cwd,
                    stdin,
                    command,
                );
                ran += 1;
            }
            "cargo" | "deploy/bundle.sh" => {
                assert!(
                    ci.contains(command.as_str()),
                    "README command neither run here nor verbatim in .ci/run: {command}"
                );
                in_ci += 1;
            }
            "scp" | "ssh" => board.push(command.clone()),
            _ => panic!("README command the test does not know how to run: {command}"),
        }
    }
    eprintln!(
        "README: {ran} commands run here, {in_ci} run verbatim by CI, {} need a board: {board:?}",
        board.len()
    );
    assert!(board.len() <= 2, "{board:?}");
    for produced in [
        "demo-out/report.json",
        "demo-out/drive.gif",
        "demo-camvid/report.md",
        "runs/camvid/best.bpk",
        "eval.json",
        "preds/grid.png",
        "model.onnx",
        "model.nnef.tgz",
        "model.int8.onnx",
        "masks/000000.png",
        "overlays/000001.png",
        "colours",
    ] {
        assert!(cwd.join(produced).exists(), "{produced} was not written");
    }
}

#[test]
fn commands_are_read_as_a_shell_would() {
    let text = "x\n```sh\n# comment\na --b \"c d\" \\\n    e\nf 'g h'\n```\n```text\nno\n```\n";
    let commands = commands(text);
    assert_eq!(commands, ["a --b \"c d\" e", "f 'g h'"]);
    assert_eq!(words(&commands[0]), ["a", "--b", "c d", "e"]);
    assert_eq!(words("x \"\" y"), ["x", "", "y"]);
}

/// Every README `train` command runs for what it promises: one with a time
/// budget has no `--epochs` cap that could end it early (the budget alone
/// decides), one without states its epochs. Parsed, not run (a budget is
/// minutes to hours).
#[test]
fn readme_training_commands_run_for_their_budget() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let trains: Vec<Vec<String>> = commands(&readme)
        .iter()
        .map(|c| words(c))
        .filter(|w| w.iter().any(|a| a == "train"))
        .collect();
    assert!(trains.len() >= 2, "README train commands: {trains:?}");
    for args in trains {
        let has = |flag: &str| args.iter().any(|a| a == flag);
        let budget = args
            .iter()
            .position(|a| a == "--time-limit")
            .map(|i| args[i + 1].parse::<f64>().expect("--time-limit minutes"));
        match budget {
            Some(minutes) => {
                assert!(minutes > 0.0, "{args:?}");
                assert!(
                    !has("--epochs"),
                    "{args:?}: --epochs could end training before its {minutes}-minute budget"
                );
            }
            None => assert!(
                has("--epochs"),
                "{args:?}: says neither a budget nor epochs"
            ),
        }
    }
}
