//! The live progress bar: current ops/s on a terminal, nothing otherwise.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress output on stderr. Hidden with `--quiet` and when stderr is not a terminal
/// (indicatif draws nothing then).
#[derive(Debug, Clone)]
pub struct Ui {
    bar: ProgressBar,
}

impl Ui {
    /// A progress line on stderr, or a hidden one.
    pub fn new(quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Self { bar }
    }

    /// A silent one, for tests.
    pub fn hidden() -> Self {
        Self::new(true)
    }

    /// Shows `message`.
    pub fn status(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
        self.bar.tick();
    }

    /// Prints a line above the bar (nothing when hidden).
    pub fn note(&self, line: impl AsRef<str>) {
        self.bar.println(line.as_ref());
    }

    /// A callback for set-up loops: `label: done/total`.
    pub fn counter(&self, label: String, total: u64) -> impl Fn(u64) + '_ {
        move |done| self.status(format!("{label}: {done}/{total}"))
    }

    /// Shows `label` with the current rate of `live` until the returned guard drops.
    pub fn rate(&self, label: String, live: Arc<AtomicU64>) -> RateGuard {
        let bar = self.bar.clone();
        let task = tokio::spawn(async move {
            let mut last = (Instant::now(), live.load(Ordering::Relaxed));
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let now = (Instant::now(), live.load(Ordering::Relaxed));
                let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64().max(1e-3);
                bar.set_message(format!("{label}: {} ops/s", crate::report::si(rate)));
                bar.tick();
                last = now;
            }
        });
        RateGuard(task)
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Stops a rate display when dropped.
#[derive(Debug)]
pub struct RateGuard(tokio::task::JoinHandle<()>);

impl Drop for RateGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
