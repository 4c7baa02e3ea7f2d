//! Winograd F(2x2, 3x3) against F(4x4, 3x3) on the 3x3 layers of edgeseg's
//! models, alone, one thread:
//!
//! `cargo run --release -p firmware --example bench_winograd -- [--runs N]
//! [--only f2|f4] [ins,outs,h,w ...]`
//!
//! Without shapes, the demo model's layers at 256x192 and at 512x256. Prints a
//! line per shape with each tile's median and minimum milliseconds over
//! `--runs` runs (default 200, after 20 warm-up runs), the ratio F4 / F2, and
//! the tile [`Tile::for_plane`] picks: the data behind
//! [`firmware::engine::winograd::MIN_TILES_4X4`]. `--only` times one tile (for
//! `perf record`).
use std::time::Instant;

use firmware::engine::winograd::{Tile, Winograd};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut runs = 200;
    let mut shapes = Vec::new();
    let mut only = None;
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--runs" => {
                runs = value()?.parse()?;
                continue;
            }
            "--only" => {
                only = Some(match value()?.as_str() {
                    "f2" => Tile::F2,
                    "f4" => Tile::F4,
                    other => anyhow::bail!("--only takes f2 or f4, not {other}"),
                });
                continue;
            }
            _ => {}
        }
        let v: Vec<usize> = arg.split(',').map(str::parse).collect::<Result<_, _>>()?;
        anyhow::ensure!(v.len() == 4, "a shape is ins,outs,h,w: got {arg}");
        shapes.push([v[0], v[1], v[2], v[3]]);
    }
    if shapes.is_empty() {
        shapes = vec![
            [32, 32, 48, 64],
            [64, 64, 24, 32],
            [128, 128, 12, 16],
            [256, 256, 6, 8],
            [16, 16, 96, 128],
            [32, 32, 64, 128],
            [64, 64, 32, 64],
            [128, 128, 16, 32],
            [256, 256, 8, 16],
        ];
    }
    let mut state = 0x2545_f491_u32;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as f32 / u32::MAX as f32 - 0.5
    };
    println!("ins -> outs  h x w     F2 median (min) ms   F4 median (min) ms   F4/F2  picked");
    for [ins, outs, h, w] in shapes {
        let input: Vec<f32> = (0..ins * h * w).map(|_| random()).collect();
        let kernel: Vec<f32> = (0..outs * ins * 9).map(|_| random()).collect();
        let bias: Vec<f32> = (0..outs).map(|_| random()).collect();
        let mut out = vec![0.0; outs * h * w];
        let mut time = |tile| {
            if only.is_some_and(|only| only != tile) {
                return (f64::NAN, f64::NAN);
            }
            let op = Winograd::new(&kernel, &bias, outs, ins, tile).with_relu();
            let mut ms = Vec::with_capacity(runs);
            for i in 0..runs + 20 {
                let start = Instant::now();
                op.run(&input, h, w, &mut out);
                if i >= 20 {
                    ms.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            ms.sort_by(f64::total_cmp);
            (ms[ms.len() / 2], ms[0])
        };
        let (f2, f4) = (time(Tile::F2), time(Tile::F4));
        println!(
            "{ins:>3} -> {outs:<3}  {h:>3} x {w:<3}  {:>8.3} ({:.3})       {:>8.3} ({:.3})       {:.2}   {:?}",
            f2.0,
            f2.1,
            f4.0,
            f4.1,
            f4.0 / f2.0,
            Tile::for_plane(h, w)
        );
    }
    Ok(())
}
