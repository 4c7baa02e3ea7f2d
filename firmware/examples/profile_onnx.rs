//! Per-node tract timings of an exported model: `cargo run --example profile_onnx -- MODEL.onnx [N]`.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(args.get(1).map(String::as_str).unwrap_or("model.onnx"));
    let top: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(15);
    let mut engine = firmware::engine::Engine::load(path)?;
    let size = engine.info().input_size;
    let input = vec![0.1f32; 3 * size.area()];
    engine.run(&input)?;
    let times = engine.profile(&input)?;
    let total: f64 = times.iter().map(|t| t.2).sum();
    println!("{} nodes, {:.1} ms", times.len(), total * 1e3);
    for (name, op, s) in times.iter().take(top) {
        println!("{:>8.2} ms  {op:<22} {name}", s * 1e3);
    }
    if std::env::var_os("KERNELS").is_some() {
        for k in engine.matmul_kernels() {
            println!("{}: {}", k.node, k.description);
        }
    }
    Ok(())
}
