//! Inference time of an exported model in edgeseg's engine, and tract's
//! per-node profile:
//!
//! `cargo run --release -p firmware --example profile_onnx -- MODEL [--precision
//! f32|f16|int8] [--threads N] [--frames N] [--no-winograd] [--no-own-ops] [--top K]`
//!
//! Runs synthetic road scenes at the model's input size: 3 warm-up frames, then
//! `--frames` timed ones (default 30); prints one JSON line with the median,
//! 10th and 90th percentile milliseconds of inference alone, then the `--top`
//! slowest nodes of one profiled run (default 0: none); with `GRAPH` set in the
//! environment, every node of the optimised graph and its inputs. `--precision int8`
//! takes an int8 file as MODEL; f16 translates a float MODEL at load.
use firmware::engine::{Engine, Options, Precision};
use firmware::segmenter::Segmenter;
use firmware::source::{FrameSource, SyntheticSource};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut model = None;
    let (mut precision, mut threads, mut frames, mut top) = (Precision::F32, 1, 30, 0);
    let mut options = Options::default();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--precision" => precision = value()?.parse().map_err(anyhow::Error::msg)?,
            "--threads" => threads = value()?.parse()?,
            "--frames" => frames = value()?.parse()?,
            "--top" => top = value()?.parse()?,
            "--no-winograd" => options.winograd = false,
            "--no-own-ops" => options.own_ops = false,
            _ if model.is_none() => model = Some(std::path::PathBuf::from(arg)),
            _ => anyhow::bail!("unexpected argument {arg}"),
        }
    }
    let model = model.ok_or_else(|| anyhow::anyhow!("usage: profile_onnx MODEL [options]"))?;
    options.f16 = precision == Precision::F16;
    let engine = Engine::load_with(&model, options)?;
    anyhow::ensure!(
        engine.precision() == precision,
        "{} runs in {}, not {precision}",
        model.display(),
        engine.precision()
    );
    let winograd = engine.winograd_convs();
    let own = engine.own_convs();
    let mut segmenter = Segmenter::new(engine);
    segmenter.set_threads(threads);
    let size = segmenter.mask_size();
    let mut source = SyntheticSource::new(size, 3);
    let mut times = Vec::with_capacity(frames);
    for i in 0..frames + 3 {
        let frame = source.next_frame()?.expect("endless").clone();
        segmenter.segment(&frame.frame())?;
        if i >= 3 {
            times.push(segmenter.times().inference.as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "model": model.display().to_string(),
            "size": size.to_string(),
            "precision": precision.name(),
            "threads": threads,
            "winograd_convolutions": winograd,
            "own_convolutions": own,
            "frames": frames,
            "median_ms": at(0.5),
            "p10_ms": at(0.1),
            "p90_ms": at(0.9),
        })
    );
    if top > 0 {
        let frame = source.next_frame()?.expect("endless").clone();
        segmenter.segment(&frame.frame())?;
        let times = segmenter.profile_last()?;
        let total: f64 = times.iter().map(|t| t.2).sum();
        println!("{} nodes, {:.2} ms in all", times.len(), total * 1e3);
        for (name, op, s) in times.iter().take(top) {
            println!("{:>8.3} ms  {op:<16} {name}", s * 1e3);
        }
    }
    if std::env::var_os("GRAPH").is_some() {
        let graph = segmenter.engine().optimized();
        for node in graph.nodes() {
            let inputs: Vec<String> = node
                .inputs
                .iter()
                .map(|i| graph.node(i.node).name.clone())
                .collect();
            println!(
                "{} = {} <- {}",
                node.name,
                node.op.name(),
                inputs.join(", ")
            );
        }
    }
    if std::env::var_os("KERNELS").is_some() {
        for k in segmenter.engine().matmul_kernels() {
            println!("{}: {}", k.node, k.description);
        }
    }
    Ok(())
}
