//! Progress of long work (`train`, `eval`): a live bar on a terminal, plain log lines otherwise
//! (pipes, files, CI), so logs stay greppable and terminals stay readable.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A bar over `total` units on stderr when it is a terminal; otherwise nothing is drawn and the
/// caller's log lines (through [`Progress::println`]) go to stdout as they are.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_plain: Cell<Instant>,
    /// Whether plain mode prints status lines (off where the caller logs its own lines).
    plain_status: bool,
}

/// Plain-mode status lines at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub fn new(total: u64, unit: &str, plain_status: bool) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let template = format!(
                "{{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  [{{elapsed_precise}}, ETA {{eta}}]"
            );
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            started: now,
            last_plain: Cell::new(now),
            plain_status,
        }
    }

    /// Move to `pos` with a status message (step, loss, tokens/s). In plain mode the message is
    /// printed to stderr at most every few seconds, with the ETA.
    pub fn update(&self, pos: u64, total: u64, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos);
                bar.set_message(msg.to_string());
            }
            None if self.plain_status
                && (self.last_plain.get().elapsed() >= PLAIN_EVERY || pos == total) =>
            {
                self.last_plain.set(Instant::now());
                let secs = self.started.elapsed().as_secs_f64();
                let eta = if pos == 0 {
                    0.0
                } else {
                    secs / pos as f64 * (total - pos) as f64
                };
                eprintln!("{pos}/{total} {msg} ({secs:.0} s, eta {eta:.0} s)");
            }
            None => {}
        }
    }

    /// A log line that stays (validation results, step lines): above the bar, or on stdout.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
