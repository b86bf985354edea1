//! Progress while a config runs: a bar redrawn in place on a terminal (pairs done,
//! rate, errors, ETA), plain periodic lines when stderr is a file or a pipe.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::load::Progress;

/// Draws progress until [`Ticker::finish`].
pub struct Ticker {
    task: Option<JoinHandle<()>>,
    tty: bool,
    progress: Arc<Progress>,
    label: String,
    total: usize,
    start: Instant,
}

/// One status text: `label [####----] done/total pairs, rate, errors, ETA`.
pub fn status_line(
    label: &str,
    done: usize,
    total: usize,
    errors: usize,
    elapsed: Duration,
    bar: bool,
) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let eta = if done >= total {
        "0s".to_string()
    } else if rate > 0.0 {
        format!("{:.0}s", total.saturating_sub(done) as f64 / rate)
    } else {
        "?".into()
    };
    let bar = if bar {
        const W: usize = 24;
        let filled = (done * W).checked_div(total).unwrap_or(W).min(W);
        format!(" [{}{}]", "#".repeat(filled), "-".repeat(W - filled))
    } else {
        String::new()
    };
    format!("{label}{bar} {done}/{total} pairs, {rate:.1} pairs/s, {errors} errors, ETA {eta}")
}

impl Ticker {
    /// Starts drawing; `every` is the plain-line interval (zero: nothing at all).
    pub fn start(progress: Arc<Progress>, label: String, total: usize, every: Duration) -> Self {
        let tty = std::io::stderr().is_terminal();
        let start = Instant::now();
        let mut me = Self {
            task: None,
            tty,
            progress: Arc::clone(&progress),
            label: label.clone(),
            total,
            start,
        };
        if every.is_zero() {
            return me;
        }
        let period = if tty {
            Duration::from_millis(200)
        } else {
            every
        };
        me.task = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let line = status_line(
                    &label,
                    progress.pairs_done.load(Ordering::Relaxed),
                    total,
                    progress.errors.load(Ordering::Relaxed),
                    start.elapsed(),
                    tty,
                );
                let mut err = std::io::stderr().lock();
                if tty {
                    // Clear the line and redraw in place.
                    let _ = write!(err, "\r\x1b[2K{line}");
                    let _ = err.flush();
                } else {
                    let _ = writeln!(err, "{line}");
                }
            }
        }));
        me
    }

    /// Stops drawing; on a terminal, leaves the final state of the bar on its line.
    pub fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
            if self.tty {
                let line = status_line(
                    &self.label,
                    self.progress.pairs_done.load(Ordering::Relaxed),
                    self.total,
                    self.progress.errors.load(Ordering::Relaxed),
                    self.start.elapsed(),
                    true,
                );
                let _ = writeln!(std::io::stderr(), "\r\x1b[2K{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_and_eta() {
        let l = status_line("b=8 c=1", 400, 800, 2, Duration::from_secs(4), true);
        assert_eq!(
            l,
            "b=8 c=1 [############------------] 400/800 pairs, 100.0 pairs/s, 2 errors, ETA 4s"
        );
        let l = status_line("x", 0, 800, 0, Duration::from_secs(1), false);
        assert_eq!(l, "x 0/800 pairs, 0.0 pairs/s, 0 errors, ETA ?");
    }
}
