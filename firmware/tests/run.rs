//! `edgeseg-run` end to end: sources, sinks and counters, with a tiny ONNX model
//! the test writes itself (a 1x1 convolution whose classes are the dominant
//! colour channel).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use firmware::Size;
use firmware::model_info::ModelInfo;
use prost::Message;
use tract_onnx::pb;

const W: u32 = 64;
const H: u32 = 48;

/// An ONNX file of `nodes` from `image` (1x3xHxW) to `logits` (1x3xHxW) with
/// `initializers`, carrying the metadata of a 3-class model in `precision`.
fn write_graph(
    path: &Path,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    precision: &str,
) {
    let info_of = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let info = ModelInfo {
        class_names: vec!["red".into(), "green".into(), "blue".into()],
        palette: vec![[255, 0, 0], [0, 255, 0], [0, 0, 255]],
        void: None,
        input_size: Size::new(W, H),
        mean: [0.0; 3],
        std: [1.0; 3],
        architecture: "dominant-channel".into(),
        val_miou: 1.0,
        precision: precision.into(),
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            node: nodes,
            initializer: initializers,
            input: vec![info_of("image", &[1, 3, H as i64, W as i64])],
            output: vec![info_of("logits", &[1, 3, H as i64, W as i64])],
            ..Default::default()
        }),
        metadata_props: info
            .to_props()
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

fn tensor(
    name: &str,
    dims: &[i64],
    kind: pb::tensor_proto::DataType,
    raw: Vec<u8>,
) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: kind as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|i| i.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// A float model whose classes are the dominant colour channel: a 1x1
/// convolution with the identity kernel.
fn write_model(path: &Path) {
    let identity = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let w = identity.iter().flat_map(|x| x.to_le_bytes()).collect();
    let float = pb::tensor_proto::DataType::Float;
    write_graph(
        path,
        vec![node("Conv", &["image", "w"], "logits")],
        vec![tensor("w", &[3, 3, 1, 1], float, w)],
        "float32",
    );
}

/// The int8 form of [`write_model`] (QuantizeLinear, QLinearConv,
/// DequantizeLinear), with the output channels of the kernel rotated by
/// `rotate`: 0 agrees with the float model, 1 calls red green.
fn write_int8_model(path: &Path, rotate: usize) {
    use pb::tensor_proto::DataType;
    let mut w = [0i8; 9];
    for o in 0..3 {
        w[o * 3 + (o + rotate) % 3] = 127;
    }
    let scalar = |name: &str, v: f32| tensor(name, &[], DataType::Float, v.to_le_bytes().to_vec());
    write_graph(
        path,
        vec![
            node("QuantizeLinear", &["image", "xs", "xz"], "xq"),
            node(
                "QLinearConv",
                &["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"],
                "yq",
            ),
            node("DequantizeLinear", &["yq", "ys", "yz"], "logits"),
        ],
        vec![
            scalar("xs", 1.0 / 255.0),
            tensor("xz", &[], DataType::Uint8, vec![0]),
            tensor(
                "wq",
                &[3, 3, 1, 1],
                DataType::Int8,
                w.iter().map(|&v| v as u8).collect(),
            ),
            scalar("ws", 1.0 / 127.0),
            tensor("wz", &[], DataType::Int8, vec![0]),
            scalar("ys", 1.0 / 255.0),
            tensor("yz", &[], DataType::Uint8, vec![0]),
        ],
        "int8",
    )
}

fn run(args: &[&str], stdin: &[u8]) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeseg-run"))
        .args(args)
        // As on a board: the binary picks tract's instruction set itself
        // (`engine::avoid_broken_kernels`), not from cargo's environment.
        .env_remove("TRACT_CPU_ISA")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// A picture whose left half is red and right half blue.
fn halves() -> image::RgbImage {
    image::RgbImage::from_fn(W, H, |x, _| {
        if x < W / 2 {
            image::Rgb([220, 30, 30])
        } else {
            image::Rgb([30, 30, 220])
        }
    })
}

fn check_lines(stdout: &str, frames: usize) {
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), frames, "{stdout}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i as u64);
        for stage in [
            "capture",
            "preprocess",
            "inference",
            "postprocess",
            "output",
            "total",
        ] {
            let ms = l["latency_ms"][stage].as_f64().unwrap();
            assert!(ms.is_finite() && ms >= 0.0, "{l}");
        }
        // The frame's whole latency covers the stages it went through.
        let stage = |s: &str| l["latency_ms"][s].as_f64().unwrap();
        assert!(
            stage("total") >= stage("preprocess") + stage("inference") + stage("postprocess"),
            "{l}"
        );
        assert!(stage("inference") > 0.0, "inference was timed: {l}");
        let (red, blue) = (
            l["fractions"]["red"].as_f64().unwrap(),
            l["fractions"]["blue"].as_f64().unwrap(),
        );
        assert!((red - 0.5).abs() < 0.03 && (blue - 0.5).abs() < 0.03, "{l}");
    }
}

#[test]
fn raw_yuv420_from_stdin_with_a_truncated_last_frame() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    // I420 of the two-halves picture, BT.601 limited range.
    let (w, h) = (W as usize, H as usize);
    let img = halves();
    let yuv = |p: &image::Rgb<u8>| {
        let [r, g, b] = p.0.map(|v| v as f32);
        [
            16.0 + 0.257 * r + 0.504 * g + 0.098 * b,
            128.0 - 0.148 * r - 0.291 * g + 0.439 * b,
            128.0 + 0.439 * r - 0.368 * g - 0.071 * b,
        ]
        .map(|v| v.round() as u8)
    };
    let mut frame = vec![0u8; w * h * 3 / 2];
    for y in 0..h {
        for x in 0..w {
            let [luma, u, v] = yuv(img.get_pixel(x as u32, y as u32));
            frame[y * w + x] = luma;
            frame[w * h + (y / 2) * (w / 2) + x / 2] = u;
            frame[w * h * 5 / 4 + (y / 2) * (w / 2) + x / 2] = v;
        }
    }
    let mut stream = frame.repeat(3);
    stream.extend_from_slice(&frame[..1000]);
    let m = model.to_str().unwrap();
    let source = format!("stdin:yuv420:{W}x{H}");
    // stdin is a live source: queues deep enough for the whole stream keep every frame.
    let args = [
        "--model", m, "--source", &source, "--sink", "jsonl:-", "--queue", "8",
    ];
    let (stdout, stderr, ok) = run(&args, &stream);
    assert!(ok, "{stderr}");
    check_lines(&stdout, 3);
    assert!(
        stderr.contains("3 frames captured, 3 processed, 0 dropped")
            && stderr.contains("1000 bytes"),
        "{stderr}"
    );
}

#[test]
fn mjpeg_file_and_picture_folder_to_png_masks() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    let m = model.to_str().unwrap();
    let mut stream = Vec::new();
    for _ in 0..2 {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut stream, 95)
            .encode_image(&halves())
            .unwrap();
    }
    stream.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xD9]); // not a picture: skipped
    let mjpeg = dir.path().join("cam.mjpeg");
    std::fs::write(&mjpeg, &stream).unwrap();
    let source = format!("mjpeg:{}", mjpeg.display());
    let masks = dir.path().join("masks");
    let sink = format!("png:{}", masks.display());
    let (stdout, stderr, ok) = run(
        &[
            "--model", m, "--source", &source, "--sink", "jsonl:-", "--sink", &sink,
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    check_lines(&stdout, 2);
    assert!(stderr.contains("1 corrupt"), "{stderr}");
    let mask = image::open(masks.join("000001.png")).unwrap().into_luma8();
    assert_eq!((mask.width(), mask.height()), (W, H));
    assert_eq!(
        (mask.get_pixel(2, 2).0[0], mask.get_pixel(W - 3, 2).0[0]),
        (0, 2)
    );

    let pictures = dir.path().join("pictures");
    std::fs::create_dir_all(&pictures).unwrap();
    for i in 0..3 {
        halves().save(pictures.join(format!("{i}.png"))).unwrap();
    }
    let source = format!("dir:{}", pictures.display());
    // Inference on two threads gives the same frames.
    let (stdout, stderr, ok) = run(
        &[
            "--model",
            m,
            "--source",
            &source,
            "--sink",
            "jsonl:-",
            "--threads",
            "2",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    check_lines(&stdout, 3);

    // Bad input is named.
    let (_, stderr, ok) = run(&["--model", m, "--source", "dir:/nonexistent-edgeseg"], &[]);
    assert!(!ok && stderr.contains("nonexistent-edgeseg"), "{stderr}");
    let (_, stderr, ok) = run(
        &["--model", "/nonexistent.onnx", "--source", "synthetic"],
        &[],
    );
    assert!(!ok && stderr.contains("nonexistent.onnx"), "{stderr}");
}

/// The wire protocol over TCP rebuilds exactly the masks the png sink writes.
#[test]
fn tcp_protocol_sink_matches_png_masks() {
    use firmware::protocol::{Decoder, MaskAssembler};
    use std::io::Read;

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let consumer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).unwrap();
        bytes
    });
    let pictures = dir.path().join("pictures");
    std::fs::create_dir_all(&pictures).unwrap();
    for i in 0..3u32 {
        // Different pictures: the red part grows.
        image::RgbImage::from_fn(W, H, |x, _| {
            if x < 10 + 15 * i {
                image::Rgb([220, 30, 30])
            } else {
                image::Rgb([30, 220, 30])
            }
        })
        .save(pictures.join(format!("{i}.png")))
        .unwrap();
    }
    let masks = dir.path().join("masks");
    let (_, stderr, ok) = run(
        &[
            "--model",
            model.to_str().unwrap(),
            "--source",
            &format!("dir:{}", pictures.display()),
            "--sink",
            &format!("tcp:{addr}"),
            "--sink",
            &format!("png:{}", masks.display()),
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("3 frames sent, 0 dropped"), "{stderr}");
    let bytes = consumer.join().unwrap();
    let mut decoder = Decoder::new();
    let seqs: Vec<_> = bytes
        .into_iter()
        .filter_map(|b| decoder.push(b))
        .map(|m| m.unwrap())
        .collect();
    // Reassemble frame by frame and compare with the PNGs.
    let mut out = vec![0u8; (W * H) as usize];
    let mut assembler = MaskAssembler::new(&mut out);
    let mut frames = 0;
    for message in &seqs {
        if let Some(h) = assembler.push(message).unwrap() {
            let png = image::open(masks.join(format!("{:06}.png", h.seq)))
                .unwrap()
                .into_luma8();
            assert_eq!(assembler.mask(), &png.into_raw()[..], "frame {}", h.seq);
            frames += 1;
        }
    }
    assert_eq!(frames, 3);
}

/// The picture sinks: colour masks, overlays, captured frames, an animated GIF
/// and an MJPEG file that `--source mjpeg:` reads back.
#[test]
fn picture_sinks_write_what_they_promise() {
    use image::AnimationDecoder;

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    let m = model.to_str().unwrap();
    let pictures = dir.path().join("pictures");
    std::fs::create_dir_all(&pictures).unwrap();
    // Twice the model's size: overlays come at the mask's size, frames at their own.
    let big = image::imageops::resize(&halves(), 2 * W, 2 * H, image::imageops::Nearest);
    for i in 0..3 {
        big.save(pictures.join(format!("{i}.png"))).unwrap();
    }
    let out = dir.path().join("out");
    let at = |what: &str| out.join(what).display().to_string();
    let sinks = [
        format!("color:{}", at("color")),
        format!("overlay:{}", at("overlay")),
        format!("frames:{}", at("frames")),
        format!("gif:{}", at("drive.gif")),
        format!("mjpeg:{}", at("drive.mjpeg")),
    ];
    let mut args = vec!["--model", m, "--source"];
    let source = format!("dir:{}", pictures.display());
    args.push(&source);
    for s in &sinks {
        args.extend(["--sink", s]);
    }
    let (_, stderr, ok) = run(&args, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("drive.gif"), "{stderr}");

    let color = image::open(out.join("color/000002.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!((color.width(), color.height()), (W, H));
    assert_eq!(color.get_pixel(2, 2).0, [255, 0, 0]);
    assert_eq!(color.get_pixel(W - 3, H - 3).0, [0, 0, 255]);
    let overlay = image::open(out.join("overlay/000000.png"))
        .unwrap()
        .into_rgb8();
    // At the frame's size; 220 * (255 - 120) / 255 + 255 * 120 / 255, rounded.
    assert_eq!((overlay.width(), overlay.height()), (2 * W, 2 * H));
    assert_eq!(overlay.get_pixel(2, 2).0, [236, 16, 16]);
    assert_eq!(overlay.get_pixel(2 * W - 3, 2).0, [16, 16, 236]);
    let frame = image::open(out.join("frames/000001.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!(frame, big, "frames are written as captured");

    let gif = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
        std::fs::File::open(out.join("drive.gif")).unwrap(),
    ))
    .unwrap();
    let frames = gif.into_frames().collect_frames().unwrap();
    assert_eq!(frames.len(), 3);
    let first = frames[0].buffer();
    assert_eq!((first.width(), first.height()), (W, H));
    let px = first.get_pixel(2, 2).0;
    assert!(px[0] > 200 && px[2] < 60, "{px:?}");

    // The MJPEG file is a stream the runtime reads back: the same halves.
    let source = format!("mjpeg:{}", at("drive.mjpeg"));
    let (stdout, stderr, ok) = run(
        &["--model", m, "--source", &source, "--sink", "jsonl:-"],
        &[],
    );
    assert!(ok, "{stderr}");
    check_lines(&stdout, 3);

    // A sink that cannot be opened is named.
    let (_, stderr, ok) = run(
        &["--model", m, "--source", &source, "--sink", "bogus:x"],
        &[],
    );
    assert!(!ok && stderr.contains("bogus:x"), "{stderr}");
}

/// `--exec`: the camera command is started again each time it exits, and
/// frames carry on across the restarts.
#[test]
fn a_camera_command_that_exits_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    // Two frames per run of the "camera".
    let frame = halves();
    let raw = dir.path().join("two.rgb");
    std::fs::write(&raw, [frame.as_raw().as_slice(), frame.as_raw()].concat()).unwrap();
    let exec = format!("cat {}", raw.display());
    let source = format!("stdin:rgb:{W}x{H}");
    let (stdout, stderr, ok) = run(
        &[
            "--model",
            model.to_str().unwrap(),
            "--source",
            &source,
            "--exec",
            &exec,
            "--frames",
            "5",
            "--queue",
            "16",
            "--sink",
            "jsonl:-",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    check_lines(&stdout, 5);
    assert!(
        stderr.contains("camera: the stream ended; reopening in 0.25 s"),
        "{stderr}"
    );
    assert!(stderr.contains("restarted 2 times"), "{stderr}");

    // A command that never delivers gives up when told to.
    let (_, stderr, ok) = run(
        &[
            "--model",
            model.to_str().unwrap(),
            "--source",
            &source,
            "--exec",
            "exit 3",
            "--max-restarts",
            "1",
        ],
        &[],
    );
    assert!(
        !ok && stderr.contains("giving up after 2 attempts"),
        "{stderr}"
    );
}

/// `v4l2:` names the device it cannot open (with the `v4l2` feature), or says
/// how to get V4L2 support (without it).
#[test]
fn v4l2_source_errors_name_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    let (_, stderr, ok) = run(
        &[
            "--model",
            model.to_str().unwrap(),
            "--source",
            "v4l2:/dev/video-edgeseg-missing:320x240",
            "--max-restarts",
            "0",
        ],
        &[],
    );
    assert!(!ok, "{stderr}");
    if cfg!(feature = "v4l2") {
        assert!(stderr.contains("/dev/video-edgeseg-missing"), "{stderr}");
    } else {
        assert!(stderr.contains("--features v4l2"), "{stderr}");
    }
}

/// `--precision auto` stops timing a candidate whose first run takes over
/// `GIVE_UP_FACTOR` times float's median: f16 on x86, where tract has no
/// half-precision matrix kernels and runs its scalar one, would otherwise hold
/// up start-up for minutes on a real model (it did, in `edgeseg demo` on a
/// Xeon with AVX-512 FP16, before f16 was limited to `f16_products`).
#[cfg(target_arch = "x86_64")]
#[test]
fn auto_precision_gives_up_on_a_far_slower_candidate() {
    use firmware::engine::{Options, Precision};
    use firmware::precision::{Choice, CpuFeatures, ModelFiles, TRIAL_FRAMES, select};
    let dir = tempfile::tempdir().unwrap();
    let float = dir.path().join("model.onnx");
    // Three 3x3 convolutions, 3 -> 64 -> 64 -> 3 channels: 0.12 G
    // multiply-adds a frame, milliseconds in f32 (1x1 ones would not do:
    // tract runs those in f16 with its f32 kernel and f16 packing).
    let weights = |name: &str, outs: i64, ins: i64| {
        let raw = (0..outs * ins * 9)
            .flat_map(|i| ((i % 7) as f32 * 0.01 - 0.03).to_le_bytes())
            .collect();
        tensor(
            name,
            &[outs, ins, 3, 3],
            pb::tensor_proto::DataType::Float,
            raw,
        )
    };
    let conv = |inputs: &[&str], output: &str| pb::NodeProto {
        attribute: vec![pb::AttributeProto {
            name: "pads".into(),
            ints: vec![1, 1, 1, 1],
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ..Default::default()
        }],
        ..node("Conv", inputs, output)
    };
    write_graph(
        &float,
        vec![
            conv(&["image", "w1"], "h1"),
            conv(&["h1", "w2"], "h2"),
            conv(&["h2", "w3"], "logits"),
        ],
        vec![
            weights("w1", 64, 3),
            weights("w2", 64, 64),
            weights("w3", 3, 64),
        ],
        "float32",
    );
    // Make f16 a candidate, as on a CPU tract had f16 kernels for.
    let cpu = CpuFeatures {
        names: Vec::new(),
        f16_arithmetic: true,
        f16_products: true,
        int8_dot: false,
    };
    let files = ModelFiles::around(&float, false);
    let chosen = select(&files, Choice::Auto, &cpu, Options::default(), 1).unwrap();
    let trials: Vec<_> = chosen
        .trials
        .iter()
        .map(|t| (t.precision, t.frames))
        .collect();
    assert_eq!(
        trials,
        [(Precision::F32, TRIAL_FRAMES), (Precision::F16, 1)],
        "{}",
        chosen.summary
    );
    assert_eq!(chosen.segmenter.engine().precision(), Precision::F32);
    assert!(
        chosen.summary.contains("not timed further"),
        "{}",
        chosen.summary
    );
}

/// `--precision auto` keeps float when the int8 model beside it disagrees,
/// however fast it is; a faithful int8 model agrees and is timed.
#[test]
fn auto_precision_keeps_float_when_int8_disagrees() {
    use firmware::engine::{Options, Precision};
    use firmware::precision::{Choice, CpuFeatures, ModelFiles, select};
    let dir = tempfile::tempdir().unwrap();
    let float = dir.path().join("model.onnx");
    let int8 = dir.path().join("model.int8.onnx");
    write_model(&float);
    // Try int8 whatever this CPU has, so that the gate is what decides.
    let cpu = CpuFeatures {
        names: Vec::new(),
        f16_arithmetic: false,
        f16_products: false,
        int8_dot: true,
    };
    let auto =
        |files: &ModelFiles| select(files, Choice::Auto, &cpu, Options::default(), 1).unwrap();

    write_int8_model(&int8, 1);
    let files = ModelFiles::around(&float, false);
    assert_eq!(files.int8.as_deref(), Some(int8.as_path()));
    let chosen = auto(&files);
    let trials: Vec<_> = chosen.trials.iter().map(|t| t.precision).collect();
    assert_eq!(
        trials,
        [Precision::F32, Precision::Int8],
        "{}",
        chosen.summary
    );
    assert!(chosen.trials[1].agreement < 0.5, "{:?}", chosen.trials);
    assert_eq!(chosen.segmenter.engine().precision(), Precision::F32);
    assert!(
        chosen.summary.starts_with("precision f32 chosen"),
        "{}",
        chosen.summary
    );

    write_int8_model(&int8, 0);
    let chosen = auto(&files);
    assert!(chosen.trials[1].agreement >= 0.99, "{:?}", chosen.trials);
    let fastest = if chosen.trials[1].median_ms < chosen.trials[0].median_ms {
        Precision::Int8
    } else {
        Precision::F32
    };
    assert_eq!(
        chosen.segmenter.engine().precision(),
        fastest,
        "{}",
        chosen.summary
    );

    // The binary: each precision runs the file it names, and says so.
    let model = float.to_str().unwrap();
    for (precision, file) in [("int8", &int8), ("f32", &float), ("f16", &float)] {
        let (stdout, stderr, ok) =
            run(&["--model", model, "--precision", precision, "--info"], b"");
        assert!(ok, "{stderr}");
        let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(info["running"]["precision"], precision, "{stdout}");
        assert_eq!(info["quantized"], false, "{stdout}");
        assert_eq!(info["running"]["file"], file.to_str().unwrap(), "{stdout}");
        // tract's AMX int8 kernel over-reads its operands and crashed this
        // model on pipeline threads: the binary keeps it out
        // (`engine::avoid_broken_kernels`).
        let kernels = info["running"]["matmul_kernels"].as_object().unwrap();
        assert!(kernels.keys().all(|k| !k.contains("amx")), "{stdout}");
        assert!(
            !info["cpu_features"].as_array().unwrap().is_empty(),
            "{stdout}"
        );
    }
    // Without a float model there is no f16.
    let alone = dir.path().join("alone.int8.onnx");
    std::fs::copy(&int8, &alone).unwrap();
    let (_, stderr, ok) = run(
        &["--model", alone.to_str().unwrap(), "--precision", "f16"],
        b"",
    );
    assert!(!ok);
    assert!(
        stderr.contains("--precision f16: no float model"),
        "{stderr}"
    );
}

/// `--workers 3` segments several frames at once and still delivers every
/// frame in capture order, with the same masks as one worker.
#[test]
fn several_workers_keep_capture_order_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    let masks = |workers: &str| {
        let out = dir.path().join(format!("masks-{workers}"));
        let (stdout, stderr, ok) = run(
            &[
                "--model",
                model.to_str().unwrap(),
                "--source",
                "synthetic:96x72",
                "--frames",
                "12",
                "--workers",
                workers,
                "--sink",
                "jsonl:-",
                "--sink",
                &format!("png:{}", out.display()),
            ],
            b"",
        );
        assert!(ok, "{stderr}");
        let seqs: Vec<u64> = stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, (0..12).collect::<Vec<_>>(), "{workers} workers");
        assert!(
            stderr.contains("12 frames captured, 12 processed, 0 dropped"),
            "{stderr}"
        );
        let mut files: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect::<Vec<_>>()
    };
    let one = masks("1");
    assert_eq!(one.len(), 12);
    assert_eq!(masks("3"), one);
}

/// `--help` and `--version` succeed; a usage error does not.
#[test]
fn help_and_version_exit_zero() {
    for flag in ["--help", "--version"] {
        let (stdout, stderr, ok) = run(&[flag], b"");
        assert!(ok, "{flag}: {stderr}");
        assert!(stdout.contains("edgeseg-run"), "{flag}: {stdout}");
    }
    let (_, stderr, ok) = run(&["--no-such-flag"], b"");
    assert!(!ok);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

/// The final counters line of `edgeseg-run`'s standard error as (captured,
/// processed, dropped).
fn final_counters(stderr: &str) -> (u64, u64, u64) {
    let counters = stderr
        .lines()
        .find(|l| l.contains("frames captured"))
        .unwrap_or_else(|| panic!("no final counters:\n{stderr}"));
    let number = |word: &str| -> u64 {
        let at = counters.find(word).unwrap();
        counters[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap()
    };
    (
        number(" frames captured"),
        number(" processed"),
        number(" dropped"),
    )
}

/// Sends `signal` to `child` with the system's `kill`.
#[cfg(unix)]
fn signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Names of our temporary files under `dir`, recursively.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(temporaries(&path));
        } else if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".edgeseg-"))
        {
            found.push(path);
        }
    }
    found
}

/// SIGTERM (what `systemctl stop` sends) and SIGINT end a long run cleanly:
/// exit 0, final counters printed, the GIF written and decodable, every
/// processed frame in the jsonl file and the PNG folder, no temporary file
/// left; and a dead run's leftovers are cleaned at the next start.
#[cfg(unix)]
#[test]
fn sigterm_and_sigint_finish_every_output() {
    use image::AnimationDecoder;

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    for sig in ["TERM", "INT"] {
        let out = dir.path().join(sig);
        std::fs::create_dir_all(&out).unwrap();
        // What a run killed with SIGKILL mid-write leaves (a dead PID).
        let stale = out.join(".edgeseg-4000000000-x7Yz.gif.tmp");
        std::fs::write(&stale, b"half a gif").unwrap();
        let jsonl = out.join("f.jsonl");
        let child = Command::new(env!("CARGO_BIN_EXE_edgeseg-run"))
            .args(["--model", model.to_str().unwrap()])
            .args(["--source", "synthetic:64x48", "--frames", "100000000"])
            .args(["--sink", &format!("jsonl:{}", jsonl.display())])
            .args(["--sink", &format!("gif:{}", out.join("d.gif").display())])
            .args(["--sink", &format!("png:{}", out.join("pngs").display())])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Let it run well into the stream, then stop it.
        let started = std::time::Instant::now();
        while std::fs::metadata(&jsonl).map_or(0, |m| m.len()) < 20_000 {
            assert!(started.elapsed().as_secs() < 60, "no frames written");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        signal(&child, sig);
        let stopped = std::time::Instant::now();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "SIG{sig}: {:?}\n{stderr}",
            output.status
        );
        assert!(stopped.elapsed().as_secs() < 10, "SIG{sig}: slow to stop");
        assert!(stderr.contains("stopping:"), "{stderr}");
        let (captured, processed, dropped) = final_counters(&stderr);
        let counters = format!("{captured} captured, {processed} processed, {dropped} dropped");
        assert_eq!(captured, processed + dropped, "{counters}");
        assert!(processed > 10, "{counters}");
        let lines = std::fs::read_to_string(&jsonl).unwrap().lines().count() as u64;
        assert_eq!(
            lines, processed,
            "every processed frame is in the jsonl file"
        );
        assert_eq!(
            std::fs::read_dir(out.join("pngs")).unwrap().count() as u64,
            processed
        );
        let gif = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
            std::fs::File::open(out.join("d.gif")).unwrap(),
        ))
        .unwrap();
        assert_eq!(gif.into_frames().count() as u64, processed);
        assert_eq!(temporaries(&out), Vec::<PathBuf>::new(), "SIG{sig}");
    }
}

/// A stop while the source blocks in a read (stdin open, no bytes coming)
/// still ends the run promptly and cleanly.
#[cfg(unix)]
#[test]
fn sigterm_ends_a_run_whose_source_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeseg-run"))
        .args(["--model", model.to_str().unwrap()])
        .args(["--source", &format!("stdin:rgb:{W}x{H}")])
        .args(["--sink", "jsonl:-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two frames, then silence with the pipe held open.
    let mut stdin = child.stdin.take().unwrap();
    let frame = halves().into_raw();
    stdin.write_all(&frame).unwrap();
    stdin.write_all(&frame).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    signal(&child, "TERM");
    let stopped = std::time::Instant::now();
    let output = child.wait_with_output().unwrap();
    drop(stdin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}\n{stderr}", output.status);
    assert!(
        stopped.elapsed().as_secs() < 8,
        "slow to stop: {:?}",
        stopped.elapsed()
    );
    check_lines(&String::from_utf8_lossy(&output.stdout), 2);
    assert!(
        stderr.contains("2 frames captured, 2 processed, 0 dropped"),
        "{stderr}"
    );
}

/// A picture folder or output file from an earlier run is refused, naming
/// it; `--overwrite` replaces it, with no old frame left among the new.
#[test]
fn earlier_outputs_are_refused_or_replaced_never_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    let (pngs, jsonl) = (dir.path().join("pngs"), dir.path().join("f.jsonl"));
    let run_with = |frames: &str, extra: &[&str]| {
        let mut args = vec![
            "--model".to_string(),
            model.display().to_string(),
            "--source".into(),
            "synthetic:64x48".into(),
            "--frames".into(),
            frames.into(),
            "--sink".into(),
            format!("png:{}", pngs.display()),
            "--sink".into(),
            format!("jsonl:{}", jsonl.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, b"")
    };
    let (_, err, ok) = run_with("5", &[]);
    assert!(ok, "{err}");
    std::fs::write(pngs.join("notes.txt"), "mine").unwrap();
    let (_, err, ok) = run_with("3", &[]);
    assert!(!ok);
    assert!(
        err.contains("pngs")
            && err.contains("holds 5 frame pictures")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap().lines().count(), 5);
    let (_, err, ok) = run_with("3", &["--overwrite"]);
    assert!(ok, "{err}");
    let mut names: Vec<String> = std::fs::read_dir(&pngs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["000000.png", "000001.png", "000002.png", "notes.txt"]
    );
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap().lines().count(), 3);
    // A file output alone is refused too.
    std::fs::remove_dir_all(&pngs).unwrap();
    let (_, err, ok) = run_with("1", &[]);
    assert!(!ok && err.contains("f.jsonl: exists"), "{err}");
}

/// A live source faster than the pipeline: stdin written as fast as a pipe
/// takes it, into a slow output (full-size overlay PNGs). The oldest frames
/// are dropped and counted, every frame is accounted for (captured =
/// processed + dropped), and latency stays bounded by the queues, not by the
/// backlog.
#[test]
fn a_live_source_faster_than_the_pipeline_drops_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    let (w, h, frames) = (640usize, 480usize, 200usize);
    let picture = image::imageops::resize(&halves(), w as u32, h as u32, image::imageops::Nearest);
    let stdin: Vec<u8> = picture.as_raw().repeat(frames);
    let (stdout, stderr, ok) = run(
        &[
            "--model",
            model.to_str().unwrap(),
            "--source",
            &format!("stdin:rgb:{w}x{h}"),
            "--sink",
            "jsonl:-",
            "--sink",
            &format!("overlay:{}", dir.path().join("overlays").display()),
        ],
        &stdin,
    );
    assert!(ok, "{stderr}");
    let (captured, processed, dropped) = final_counters(&stderr);
    let (captured, processed, dropped) = (captured as usize, processed as usize, dropped as usize);
    let counters = format!("{captured} captured, {processed} processed, {dropped} dropped");
    assert_eq!(captured, frames, "{counters}");
    assert_eq!(captured, processed + dropped, "{counters}");
    assert!(
        dropped > 0,
        "nothing dropped: the source did not outrun the pipeline ({counters})"
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= processed,
        "{} lines",
        lines.len()
    );
    // Frames come out in capture order with gaps where frames were dropped.
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("overlays"))
            .unwrap()
            .count(),
        lines.len()
    );
    // Bounded latency: a frame waits behind at most a queue's worth of
    // others, never behind the whole backlog of 200 frames.
    let totals: Vec<f64> = lines
        .iter()
        .map(|l| l["latency_ms"]["total"].as_f64().unwrap())
        .collect();
    let output: Vec<f64> = lines
        .iter()
        .map(|l| l["latency_ms"]["output"].as_f64().unwrap())
        .collect();
    let slowest = totals.iter().cloned().fold(0.0, f64::max);
    let per_frame = output.iter().sum::<f64>() / output.len() as f64;
    assert!(
        slowest < 10.0 * per_frame.max(1.0) + 500.0,
        "a frame took {slowest:.0} ms with {per_frame:.1} ms of output per frame"
    );
}

/// Log records go through `log`: none by default, tract's own (how it
/// lowered each layer) with `-vv`; `-q` drops the periodic statistics.
#[test]
fn verbosity_shows_tract_records_and_quiet_hides_reports() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model);
    let m = model.to_str().unwrap();
    let base = ["--model", m, "--source", "synthetic:64x48", "--frames", "3"];
    let (_, plain, ok) = run(&base, b"");
    assert!(ok, "{plain}");
    assert!(!plain.contains("tract_"), "{plain}");
    let (_, verbose, ok) = run(&[&base[..], &["-vv"]].concat(), b"");
    assert!(ok, "{verbose}");
    assert!(
        verbose.contains("DEBUG tract_"),
        "no tract records with -vv:\n{verbose}"
    );
    let (_, quiet, ok) = run(
        &[&base[..], &["-q", "--report-every", "0.001"]].concat(),
        b"",
    );
    assert!(ok, "{quiet}");
    assert!(
        !quiet.contains("FPS; mean ms") || quiet.matches("FPS; mean ms").count() == 1,
        "{quiet}"
    );
    assert!(quiet.contains("3 frames captured"), "{quiet}");
}
