//! Progress bars: every bar the host draws is made here, in one style.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what`, counting `unit` (such as "batches"
/// or "images"); hidden when `quiet`.
pub fn bar(len: u64, quiet: bool, what: impl Into<String>, unit: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.into());
    bar
}
