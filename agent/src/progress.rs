//! The CLI's progress bar (indicatif), drawn on stderr when it is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use fim_engine::scan::Progress;
use indicatif::{ProgressBar, ProgressStyle};

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: Option<u64>) {
        match total {
            Some(n) => self.0.set_length(n),
            // A streaming scan counts entries as it goes, without a total to show a bar against.
            None => self.0.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} files")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        }
    }
    fn advance(&self, entries: u64) {
        self.0.inc(entries);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A progress bar when stderr is a terminal, else nothing.
pub fn terminal_bar() -> Option<Arc<dyn Progress>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} files ({eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(Arc::new(Bar(bar)))
}
