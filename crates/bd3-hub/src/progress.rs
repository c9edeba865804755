//! Download progress on stderr: a bar on a terminal, plain lines elsewhere (logs, CI).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// How downloads report progress on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar when stderr is a terminal, else [`Progress::Plain`].
    Auto,
    /// One line when a download starts and one when it ends.
    Plain,
    /// Nothing.
    Quiet,
}

/// Bytes in decimal units, one decimal: "652.3 MB".
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A URL without its query string: CDN addresses carry long signatures that
/// only clutter a log line.
fn display_url(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// Progress of one file's download.
pub(crate) enum Reporter {
    Bar(ProgressBar),
    Plain { file: String, total: u64 },
    Quiet,
}

impl Reporter {
    pub(crate) fn start(mode: Progress, file: &str, total: u64, from: u64, url: &str) -> Reporter {
        let mode = match mode {
            Progress::Auto if std::io::stderr().is_terminal() => None,
            Progress::Auto => Some(Progress::Plain),
            other => Some(other),
        };
        match mode {
            None => {
                let bar = ProgressBar::new(total);
                let style = ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_message(format!("downloading {file}"));
                bar.set_position(from);
                Reporter::Bar(bar)
            }
            Some(Progress::Quiet) => Reporter::Quiet,
            Some(_) => {
                if from > 0 {
                    eprintln!(
                        "resuming {file} at {} of {} from {}",
                        human_bytes(from),
                        human_bytes(total),
                        display_url(url)
                    );
                } else {
                    eprintln!(
                        "downloading {file} ({}) from {}",
                        human_bytes(total),
                        display_url(url)
                    );
                }
                Reporter::Plain {
                    file: file.to_string(),
                    total,
                }
            }
        }
    }

    pub(crate) fn advance(&self, bytes: u64) {
        if let Reporter::Bar(bar) = self {
            bar.inc(bytes);
        }
    }

    pub(crate) fn finish(self) {
        match self {
            Reporter::Bar(bar) => bar.finish_and_clear(),
            Reporter::Plain { file, total } => {
                eprintln!("done: {file} ({})", human_bytes(total))
            }
            Reporter::Quiet => {}
        }
    }

    /// Leave the line, so that the error printed next is not drawn over.
    pub(crate) fn abandon(self) {
        if let Reporter::Bar(bar) = self {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_decimal_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(652_300_000), "652.3 MB");
        assert_eq!(human_bytes(1_500_000_000), "1.5 GB");
    }

    #[test]
    fn display_url_drops_the_query() {
        assert_eq!(display_url("https://cdn/x?sig=abc"), "https://cdn/x");
        assert_eq!(display_url("https://hub/a/b"), "https://hub/a/b");
    }
}
