//! `edgeseg`: the workstation command line of edgeseg.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firmware::Size;
use indicatif::{ProgressBar, ProgressStyle};

/// Train, evaluate and export road-scene segmentation models for edge boards.
#[derive(Debug, Parser)]
#[command(name = "edgeseg", version, about, long_about = None)]
struct Cli {
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write synthetic road scenes as a dataset in the CamVid layout
    /// (`train/`, `trainannot/`, `val/`, `valannot/`; labels are 8-bit class ids, 11 = void).
    Synth {
        /// Folder to write the dataset into (created if missing; files in it are replaced).
        #[arg(long)]
        out: PathBuf,
        /// Number of training images.
        #[arg(long, default_value_t = 200)]
        train: usize,
        /// Number of validation images.
        #[arg(long, default_value_t = 40)]
        val: usize,
        /// Image size as WIDTHxHEIGHT.
        #[arg(long, default_value = "480x360")]
        size: Size,
        /// Seed: the same seed writes byte-identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn progress(len: usize, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Synth {
            out,
            train,
            val,
            size,
            seed,
        } => {
            let spec = host::synth::SynthSpec {
                train,
                val,
                size,
                seed,
            };
            let bar = progress(train + val, cli.quiet, "synth");
            let summary = host::synth::write_dataset(&out, &spec, &|| bar.inc(1))
                .with_context(|| format!("writing the synthetic dataset to {}", out.display()))?;
            bar.finish_and_clear();
            println!(
                "wrote {train} training and {val} validation scenes of {size} to {}",
                out.display()
            );
            println!("class share in train:");
            for (name, f) in summary.classes.iter().zip(&summary.train_fractions) {
                println!("  {name:<11} {:5.1}%", 100.0 * f);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
