//! Times one 3x3 convolution in tract, float against int8, to see which
//! quantisation choices keep tract on its fast integer path.
use firmware::engine::Engine;
use model_export::graph::{Conv, Graph, Op, Weights};
use model_export::quant::{QuantOptions, WeightScheme, quantize};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (c, h, w) = (
        args.first().copied().unwrap_or(64),
        args.get(1).copied().unwrap_or(48),
        args.get(2).copied().unwrap_or(64),
    );
    let mut rng = firmware::rng::Rng::new(1);
    let mut g = Graph::new([3, h, w]);
    let mut x = Graph::INPUT;
    for i in 0..4 {
        let cin = if i == 0 { 3 } else { c };
        let data = (0..c * cin * 9).map(|_| rng.f32() * 0.2 - 0.1).collect();
        x = g
            .add(
                format!("c{i}"),
                Op::Conv(Conv {
                    weights: Weights::new([c, cin, 3, 3], data).unwrap(),
                    bias: Some(vec![0.01; c]),
                    stride: [1, 1],
                    pads: [1; 4],
                }),
                &[x],
            )
            .unwrap();
        x = g.add(format!("r{i}"), Op::Relu, &[x]).unwrap();
    }
    let mut info = firmware::model_info::ModelInfo {
        class_names: (0..c).map(|i| i.to_string()).collect(),
        palette: vec![[0; 3]; c],
        void: None,
        input_size: firmware::Size::new(w as u32, h as u32),
        mean: [0.0; 3],
        std: [1.0; 3],
        architecture: "probe".into(),
        val_miou: f64::NAN,
        precision: "float32".into(),
    };
    info.precision = "float32".into();
    let input: Vec<f32> = (0..3 * h * w).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let float = prost::Message::encode_to_vec(&model_export::onnx::to_model(&g, &info));
    let time = |bytes: &[u8]| {
        let mut e = Engine::from_bytes(bytes, "probe").unwrap();
        e.run(&input).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..5 {
            e.run(&input).unwrap();
        }
        if std::env::var_os("PROFILE").is_some() {
            for (n, op, s) in e.profile(&input).unwrap().iter().take(6) {
                println!("    {:.2} ms {op} {n}", s * 1e3);
            }
        }
        (t.elapsed().as_secs_f64() / 5.0 * 1e3, e.matmul_kernels())
    };
    let (tf, _) = time(&float);
    println!("float: {tf:.2} ms for {:.1} MMAC", g.macs() as f64 / 1e6);
    for activations in [
        model_export::quant::Activations::U8,
        model_export::quant::Activations::I8,
    ] {
        for weights in [WeightScheme::PerTensor, WeightScheme::PerChannel] {
            let (q, _) = quantize(
                &g,
                &info,
                std::slice::from_ref(&input),
                QuantOptions {
                    weights,
                    activations,
                    ..Default::default()
                },
            )
            .unwrap();
            let (tq, k) = time(&prost::Message::encode_to_vec(&q));
            println!(
                "{activations:?} {weights:?}: {tq:.2} ms\n  {}",
                k[1].description
            );
        }
    }
}
