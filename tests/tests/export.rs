//! A trained run exported to ONNX: tract agrees with Burn, and the reference
//! tools (onnx's full checker, onnxruntime) accept the file and agree with tract.

use std::path::PathBuf;
use std::process::Command;

use firmware::engine::Engine;
use host::config::TrainConfig;
use host::model::ModelConfig;
use host::run::{RunDir, Start};
use host::train::train;

/// The Python interpreter with `onnx` and `onnxruntime`: `EDGESEG_PYTHON`, or
/// the environment `bench/setup-python.sh` creates.
fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("EDGESEG_PYTHON").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/edgeseg/venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import onnx, onnxruntime"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn tiny_run(dir: &std::path::Path, model: ModelConfig) -> RunDir {
    let mut config = TrainConfig::new(model, firmware::Size::new(64, 48));
    config.data.synthetic_train = 8;
    config.data.synthetic_val = 4;
    config.epochs = Some(2);
    config.batch = 4;
    config.augment = None;
    let run = RunDir::new(dir.join("run"));
    train(&config, &run, Start::New, true, |_| {}).unwrap();
    run
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs `tests/python/check_onnx.py`: `model` passes onnx's full checker, and
/// onnxruntime's logits for `input` match tract's `logits` (argmax agreement at
/// least `min_agreement`, max abs difference at most `max_abs_diff`).
fn onnxruntime_agrees(
    python: &std::path::Path,
    model: &std::path::Path,
    input: &[f32],
    logits: &[f32],
    min_agreement: f64,
    max_abs_diff: f64,
) {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (dir.path().join("x.f32"), dir.path().join("y.f32"));
    std::fs::write(&x, f32_bytes(input)).unwrap();
    std::fs::write(&y, f32_bytes(logits)).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/check_onnx.py");
    let output = Command::new(python)
        .arg(script)
        .arg(model)
        .arg(&x)
        .arg(&y)
        .arg(min_agreement.to_string())
        .arg(max_abs_diff.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}: {}{}",
        model.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "{}: {}",
        model.display(),
        String::from_utf8_lossy(&output.stdout).trim()
    );
}

#[test]
fn exported_runs_pass_the_reference_checks() {
    let dir = tempfile::tempdir().unwrap();
    let python = python();
    if python.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("CI must provide python with onnx and onnxruntime (bench/setup-python.sh)");
        }
        eprintln!("skipping the onnx/onnxruntime half: run bench/setup-python.sh --no-torch");
    }
    let models = [
        ModelConfig::Unet {
            num_classes: 11,
            base_width: 4,
            depth: 3,
            bilinear: true,
        },
        ModelConfig::linknet(11, 18, 0.125),
    ];
    for (i, model) in models.into_iter().enumerate() {
        let run = tiny_run(&dir.path().join(i.to_string()), model.clone());
        let out = dir.path().join(format!("{}.onnx", model.name()));
        // 60x44 is not a multiple of 32: the graph pads and crops.
        let size = firmware::Size::new(60, 44);
        let report = host::export::export_run(&run, "best.bpk", Some(size), &out, 3).unwrap();
        assert!(report.agreement.argmax_agreement > 0.999, "{report:?}");
        assert!(report.agreement.max_abs_diff < 1e-3, "{report:?}");

        // The file carries what the board needs.
        let mut engine = Engine::load(&out).unwrap();
        let info = engine.info().clone();
        assert_eq!(info.input_size, size);
        assert_eq!(info.class_names, firmware::CLASS_NAMES[..11]);
        assert_eq!(info.architecture, model.name());
        assert!((info.val_miou - run.state().unwrap().best_miou).abs() < 1e-5);

        let Some(python) = &python else { continue };
        let config = run.config().unwrap();
        let input = host::export::validation_inputs(&config, size, 1)
            .unwrap()
            .remove(0);
        let logits = engine.run(&input).unwrap().to_vec();
        onnxruntime_agrees(python, &out, &input, &logits, 0.999, 1e-3);
    }
}

/// The on-board segmenter gives the same masks from a camera's I420 frame as
/// from the RGB picture it encodes, through an exported model that segments.
#[test]
fn segmenter_reads_camera_frames() {
    use firmware::frame::{Frame, PixelFormat};
    use firmware::segmenter::Segmenter;

    let mut segmenter = Segmenter::load(&segmenting_model().float).unwrap();
    let size = firmware::Size::new(160, 120);
    let (w, h) = (160usize, 120usize);
    let (mut rgb, mut labels) = (vec![0u8; 3 * w * h], vec![0u8; w * h]);
    firmware::synth::render_scene(11, w, h, &mut rgb, &mut labels).unwrap();
    segmenter
        .segment(&Frame::new(PixelFormat::Rgb8, size, 3 * w, &rgb).unwrap())
        .unwrap();
    let from_rgb = segmenter.mask().to_vec();
    assert_eq!(from_rgb.len(), segmenter.mask_size().area());
    // Agreement means something only on a mask of several classes.
    let present = classes_present(&from_rgb);
    assert!(present >= 4, "{present} classes in the RGB frame's mask");

    // I420 with rpicam's padded stride (160 -> 192 bytes).
    let stride = PixelFormat::I420.camera_stride(160);
    let mut yuv = vec![0u8; PixelFormat::I420.frame_len(120, stride)];
    let to_yuv = |p: &[u8]| {
        let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
        [
            16.0 + 0.257 * r + 0.504 * g + 0.098 * b,
            128.0 - 0.148 * r - 0.291 * g + 0.439 * b,
            128.0 + 0.439 * r - 0.368 * g - 0.071 * b,
        ]
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
    };
    let (cs, plane) = (stride / 2, stride * h);
    for y in 0..h {
        for x in 0..w {
            let [luma, u, v] = to_yuv(&rgb[3 * (y * w + x)..][..3]);
            yuv[y * stride + x] = luma;
            if x % 2 == 0 && y % 2 == 0 {
                yuv[plane + (y / 2) * cs + x / 2] = u;
                yuv[plane + cs * (h / 2) + (y / 2) * cs + x / 2] = v;
            }
        }
    }
    segmenter
        .segment(&Frame::camera(PixelFormat::I420, size, &yuv).unwrap())
        .unwrap();
    let same = from_rgb
        .iter()
        .zip(segmenter.mask())
        .filter(|(a, b)| a == b)
        .count();
    let agreement = same as f64 / from_rgb.len() as f64;
    assert!(agreement > 0.95, "I420 and RGB masks agree on {agreement}");
    // Timed, without comparing stages (one sample on a loaded machine).
    assert!(segmenter.times().inference > std::time::Duration::ZERO);
}

/// `edgeseg-run --tta flip` on a model that segments: the board's
/// flip-averaged masks are what Burn computes for `edgeseg eval --tta flip`
/// (99.9 % of pixels: two engines' rounding at near ties), a mirrored frame
/// gives exactly the mirrored mask, and the averaging changes some pixels.
#[test]
fn flip_averaging_on_the_board_matches_the_host_and_mirrors_exactly() {
    use firmware::frame::{Frame, PixelFormat};
    use firmware::segmenter::Segmenter;

    let model = segmenting_model();
    let size = model.size;
    let (w, h) = (size.width as usize, size.height as usize);
    let predictor = host::predict::Predictor::from_run(&model.run, "best.bpk").unwrap();
    let mut plain = Segmenter::load(&model.float).unwrap();
    let mut flip = plain.fork().unwrap();
    flip.set_flip(true);
    assert!(flip.fork().unwrap().flip(), "a fork keeps flip averaging");
    let (mut changed, mut same_as_host) = (0, 0);
    for seed in 20..23 {
        let (mut rgb, mut labels) = (vec![0u8; 3 * w * h], vec![0u8; w * h]);
        firmware::synth::render_scene(seed, w, h, &mut rgb, &mut labels).unwrap();
        let frame = Frame::new(PixelFormat::Rgb8, size, 3 * w, &rgb).unwrap();
        flip.segment(&frame).unwrap();
        let board = flip.mask().to_vec();
        assert!(
            classes_present(&board) >= 4,
            "scene {seed}: too few classes"
        );
        plain.segment(&frame).unwrap();
        changed += board
            .iter()
            .zip(plain.mask())
            .filter(|(a, b)| a != b)
            .count();
        let image = image::RgbImage::from_raw(w as u32, h as u32, rgb.clone()).unwrap();
        let host = predictor.mask_with(&image, host::inference::Tta::Flip);
        same_as_host += board.iter().zip(&host).filter(|(a, b)| a == b).count();
        // The mirrored frame: each row of pixels reversed.
        let mirrored: Vec<u8> = rgb
            .chunks_exact(3 * w)
            .flat_map(|row| row.chunks_exact(3).rev().flatten().copied())
            .collect();
        flip.segment(&Frame::new(PixelFormat::Rgb8, size, 3 * w, &mirrored).unwrap())
            .unwrap();
        let expected: Vec<u8> = board
            .chunks_exact(w)
            .flat_map(|row| row.iter().rev().copied())
            .collect();
        assert!(
            flip.mask() == expected,
            "scene {seed}: the mirrored frame's mask"
        );
    }
    let agreement = same_as_host as f64 / (3 * w * h) as f64;
    assert!(
        agreement >= 0.999,
        "board and host flip masks agree on {agreement}"
    );
    assert!(changed > 0, "flip averaging changed no pixel");
}

/// `model` loaded with edgeseg's own operators (Winograd and the others) or,
/// when `ours` is false, on tract's own path only.
fn load_own_ops(model: &std::path::Path, ours: bool) -> Engine {
    let options = firmware::engine::Options {
        f16: false,
        winograd: ours,
        own_ops: ours,
    };
    Engine::load_with(model, options).unwrap()
}

/// The nodes of `engine`'s optimised graph that are still tract's matrix
/// products.
fn left_on_tract_products(engine: &Engine) -> Vec<String> {
    engine
        .optimized()
        .nodes()
        .iter()
        .filter(|n| n.op.name().contains("MatMul"))
        .map(|n| n.name.clone())
        .collect()
}

/// edgeseg's Winograd, pointwise, upsampling, direct and im2col-product
/// operators against tract's own convolutions on exported networks at sizes
/// that are not multiples of the tiles: every logit within 1e-4 of the
/// largest logit's magnitude, and the substitutions really made (no
/// convolution left on tract's products).
#[test]
fn own_convolutions_match_tract_on_exported_models() {
    let dir = tempfile::tempdir().unwrap();
    let models = [
        ModelConfig::unet(11, 16),
        ModelConfig::linknet(11, 18, 0.25).with_stem_skip(true),
    ];
    for (i, model) in models.into_iter().enumerate() {
        let run = tiny_run(&dir.path().join(i.to_string()), model.clone());
        let config = run.config().unwrap();
        for size in [firmware::Size::new(61, 45), firmware::Size::new(98, 70)] {
            let out = dir.path().join(format!("{i}-{size}.onnx"));
            host::export::export_run(&run, "best.bpk", Some(size), &out, 1).unwrap();
            let (mut plain, mut fast) = (load_own_ops(&out, false), load_own_ops(&out, true));
            assert_eq!((plain.winograd_convs(), plain.own_convs()), (0, 0));
            assert!(
                fast.winograd_convs() >= 2 && fast.own_convs() >= 2,
                "{} at {size}: {} Winograd and {} other own convolutions",
                model.name(),
                fast.winograd_convs(),
                fast.own_convs()
            );
            // Every convolution is off tract's products.
            let left = left_on_tract_products(&fast);
            assert!(left.is_empty(), "{} at {size}: {left:?}", model.name());
            // Every ReLU after an im2col convolution is fused into its
            // product (none left behind the convolution's reshape).
            for engine in [&plain, &fast] {
                let graph = engine.optimized();
                let unfused = graph.nodes().iter().filter(|n| {
                    n.op.name() == "OptMaxByScalar"
                        && graph.node(n.inputs[0].node).op.name() == "IntoShape"
                });
                assert_eq!(unfused.count(), 0, "{} at {size}", model.name());
            }
            for input in host::export::validation_inputs(&config, size, 2).unwrap() {
                let expected = plain.run(&input).unwrap().to_vec();
                let got = fast.run(&input).unwrap();
                let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let worst = got
                    .iter()
                    .zip(&expected)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst <= 1e-4 * scale,
                    "{} at {size}: max |diff| {worst} against max |logit| {scale}",
                    model.name()
                );
            }
        }
    }
}

/// A LinkNet trained on synthetic scenes until it segments (several classes
/// learnt), exported to float ONNX: shared by the tests whose agreement
/// thresholds would hold for a nearly constant mask. Trained once per test
/// binary, in Cargo's temporary folder for integration tests.
struct Segmenting {
    size: firmware::Size,
    data: PathBuf,
    run: RunDir,
    float: PathBuf,
    dir: PathBuf,
}

fn segmenting_model() -> &'static Segmenting {
    static MODEL: std::sync::OnceLock<Segmenting> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("segmenting-model");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let size = firmware::Size::new(96, 64);
        let data = dir.join("data");
        let spec = host::synth::SynthSpec {
            train: 96,
            val: 12,
            size,
            seed: 3,
        };
        host::synth::write_dataset(&data, &spec, &|| {}).unwrap();
        let mut config = TrainConfig::new(ModelConfig::linknet(11, 18, 0.25), size);
        config.data.root = Some(data.clone());
        config.data.synthetic_train = 0;
        config.data.synthetic_val = 0;
        config.epochs = Some(40);
        config.batch = 8;
        config.lr = 4e-3;
        let run = RunDir::new(dir.join("run"));
        train(&config, &run, Start::New, true, |_| {}).unwrap();
        let float = dir.join("model.onnx");
        host::export::export_run(&run, "best.bpk", None, &float, 2).unwrap();
        Segmenting {
            size,
            data,
            run,
            float,
            dir,
        }
    })
}

/// Classes covering at least 2 % of `mask` each.
fn classes_present(mask: &[u8]) -> usize {
    let mut counts = [0usize; 256];
    for &c in mask {
        counts[c as usize] += 1;
    }
    counts.iter().filter(|&&n| n * 50 >= mask.len()).count()
}

/// The int8 file of a model that really segments keeps its accuracy: the
/// quantisation report's agreement and per-class IoU against float are
/// asserted, the file passes onnx's full checker, and onnxruntime's int8
/// masks match tract's.
#[test]
fn int8_keeps_the_accuracy_of_a_model_that_segments() {
    let Segmenting {
        size,
        data,
        run,
        float,
        dir,
    } = segmenting_model();
    let size = *size;
    let int8 = dir.join("model.int8.onnx");
    let report = host::quantize::quantize_file(&host::quantize::QuantizeJob {
        model: float.clone(),
        calib: data.clone(),
        calib_images: 16,
        out: int8.clone(),
        options: Default::default(),
        data: Some(data.clone()),
        eval_images: 12,
    })
    .unwrap();
    eprintln!("{}", report.table());

    // The float model segments: several classes, not one constant mask.
    let [f, q] = &report.matrices;
    let (f_iou, q_iou) = (f.iou(), q.iou());
    let learnt = f_iou.iter().filter(|v| v.is_some_and(|v| v >= 0.3)).count();
    assert!(
        learnt >= 4,
        "only {learnt} classes above 0.3 IoU: {f_iou:?}"
    );
    assert!(f.mean_iou() >= 0.25, "float mIoU {}", f.mean_iou());
    // int8 keeps its accuracy, class by class.
    assert_eq!(report.images, 12);
    assert!(report.agreement >= 0.99, "agreement {}", report.agreement);
    assert!(
        (f.mean_iou() - q.mean_iou()).abs() <= 0.005,
        "mIoU {} float, {} int8",
        f.mean_iou(),
        q.mean_iou()
    );
    for ((name, a), b) in report.info.class_names.iter().zip(&f_iou).zip(&q_iou) {
        if let (Some(a), Some(b)) = (a, b) {
            assert!((a - b).abs() <= 0.01, "{name}: IoU {a} float, {b} int8");
        }
    }
    assert!(report.bytes[1] * 3 < report.bytes[0], "{:?}", report.bytes);

    // edgeseg's int8 convolutions (where the CPU has AVX-512 VNNI) agree
    // with tract's int8 path on the frames, and leave no convolution on
    // tract's products.
    let (mut plain, mut fast) = (load_own_ops(&int8, false), load_own_ops(&int8, true));
    if firmware::engine::qconv::available() {
        let left = left_on_tract_products(&fast);
        assert!(left.is_empty(), "int8 convolutions left to tract: {left:?}");
        assert!(
            fast.own_convs() >= 10,
            "{} own convolutions",
            fast.own_convs()
        );
    } else {
        eprintln!("this CPU has no AVX-512 VNNI: tract runs every int8 convolution");
    }
    let classes = report.info.num_classes();
    let mask = |logits: &[f32]| {
        let mut mask = vec![0u8; logits.len() / classes];
        firmware::post::argmax(logits, classes, &mut mask).unwrap();
        mask
    };
    for input in host::export::validation_inputs(&run.config().unwrap(), size, 3).unwrap() {
        let expected = plain.run(&input).unwrap().to_vec();
        let got = fast.run(&input).unwrap();
        let worst = got
            .iter()
            .zip(&expected)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let (a, b) = (mask(got), mask(&expected));
        let same = a.iter().zip(&b).filter(|(a, b)| a == b).count();
        // A requantisation may round one step apart, and that step travels.
        assert!(worst <= 0.5, "int8 logits {worst} apart");
        assert!(
            same * 1000 >= 995 * a.len(),
            "masks agree on {same} of {}",
            a.len()
        );
    }

    // The reference tools accept the int8 file and agree with tract.
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide python with onnx and onnxruntime (bench/setup-python.sh)"
        );
        eprintln!("skipping the onnx/onnxruntime half: run bench/setup-python.sh --no-torch");
        return;
    };
    let mut engine = Engine::load(&int8).unwrap();
    let input = host::export::validation_inputs(&run.config().unwrap(), size, 1)
        .unwrap()
        .remove(0);
    let logits = engine.run(&input).unwrap().to_vec();
    // Runtimes may round a requantisation one step apart: a bound of a few
    // steps on the logits, and the masks nearly identical.
    onnxruntime_agrees(&python, &int8, &input, &logits, 0.99, 0.5);
}
