//! How the binaries (`edgeseg`, `edgeseg-run`) show log records: edgeseg's
//! own (`log`) and tract's, on standard error. Libraries only emit records;
//! this is the one place a logger is set up.

use log::LevelFilter;

/// The level for `-q` and a count of `-v`: errors only with `-q`; warnings by
/// default; `-v` adds progress information (tract's included), `-vv` debug
/// records (tract's graph decisions), `-vvv` everything.
pub fn level(verbose: u8, quiet: bool) -> LevelFilter {
    match (quiet, verbose) {
        (true, _) => LevelFilter::Error,
        (false, 0) => LevelFilter::Warn,
        (false, 1) => LevelFilter::Info,
        (false, 2) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    }
}

/// Sends log records at [`level`] to standard error, with each record's
/// origin (`tract_core::...`, `firmware::...`); `RUST_LOG` refines it
/// (`RUST_LOG=tract_core=debug`). Only the first call has an effect.
pub fn init(verbose: u8, quiet: bool) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level(verbose, quiet))
        .format_timestamp(None)
        .format_target(true);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    let _ = builder.try_init();
}
