//! Progress of work on several functions at once: a spinner line per function on a terminal
//! (stderr), plain lines on stdout otherwise, so logs and scripts see one line per result.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Progress {
    multi: Option<MultiProgress>,
    /// Result lines also go to stdout: it is not the terminal the bars are drawn on.
    lines: bool,
}

/// One function's line.
pub struct Task {
    bar: Option<ProgressBar>,
    lines: bool,
    started: Instant,
}

impl Progress {
    /// Bars when stderr is a terminal, else plain lines.
    pub fn new() -> Progress {
        Progress::with_bars(crate::term::stderr_is_terminal())
    }

    /// Plain lines only: for output shared with other writers (`skyfri up`'s log).
    pub fn plain() -> Progress {
        Progress::with_bars(false)
    }

    fn with_bars(bars: bool) -> Progress {
        Progress {
            multi: bars.then(MultiProgress::new),
            lines: !bars || !std::io::stdout().is_terminal(),
        }
    }

    /// A line for `name`, shown as queued until its first step.
    pub fn task(&self, name: &str, width: usize) -> Task {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            let style = ProgressStyle::with_template(&format!(
                "{{spinner:.cyan}} {{prefix:<{width}.bold}} {{wide_msg}} {{elapsed:>4.dim}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(name.to_string());
            bar.set_message("queued");
            bar
        });
        Task {
            bar,
            lines: self.lines,
            started: Instant::now(),
        }
    }
}

impl Task {
    /// What the task does now.
    pub fn step(&mut self, message: String) {
        self.started = Instant::now();
        if let Some(bar) = &self.bar {
            bar.reset_elapsed();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message(message);
        }
    }

    /// Seconds since the first step, as `1.2s`.
    pub fn elapsed(&self) -> String {
        format!("{:.1}s", self.started.elapsed().as_secs_f64())
    }

    /// Done: `line` is what a log or script sees.
    pub fn done(&self, summary: &str, line: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(format!(
                "{} {summary}",
                console::style("done").green().for_stderr()
            ));
        }
        if self.lines {
            println!("{line}");
        }
    }

    /// Failed: the bar says so in one line; the whole error is reported by the caller.
    pub fn failed(&self, summary: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(format!(
                "{} {summary}",
                console::style("failed").red().bold().for_stderr()
            ));
        }
    }
}
