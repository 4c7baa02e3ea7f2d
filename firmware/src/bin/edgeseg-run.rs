//! `edgeseg-run`: the on-board runtime of edgeseg.

use std::process::ExitCode;

use clap::Parser;
use firmware::Size;
use firmware::stats::Histogram;

/// Stream camera frames through a segmentation model and deliver the masks.
#[derive(Debug, Parser)]
#[command(name = "edgeseg-run", version, about, long_about = None)]
struct Cli {
    /// Frame source. `synthetic[:WxH]` is a drive from the built-in road-scene
    /// generator; its ground-truth labels stand in for model output.
    #[arg(long, default_value = "synthetic:480x360")]
    source: String,
    /// Stop after this many frames.
    #[arg(long, default_value_t = 1)]
    frames: u64,
    /// Seed of the synthetic drive.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn parse_source(s: &str) -> anyhow::Result<Size> {
    match s.split_once(':') {
        None if s == "synthetic" => Ok(Size::new(480, 360)),
        Some(("synthetic", size)) => size
            .parse()
            .map_err(|e| anyhow::anyhow!("--source {s}: {e}")),
        _ => anyhow::bail!("--source {s}: unknown source; this build knows `synthetic[:WxH]`"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let size = parse_source(&cli.source)?;
    let drive = firmware::synth::Drive::new(cli.seed);
    let mut rgb = vec![0; 3 * size.area()];
    let mut labels = vec![0; size.area()];
    for i in 0..cli.frames {
        drive.render_frame(
            i,
            size.width as usize,
            size.height as usize,
            &mut rgb,
            &mut labels,
        )?;
        let hist = Histogram::of(&labels);
        println!("frame {i} {size}: class histogram (pixels)");
        for (name, n) in firmware::CLASS_NAMES.iter().zip(hist.counts) {
            println!("  {name:<11} {n:>8}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => match run(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            let _ = e.print();
            ExitCode::from(2)
        }
    }
}
