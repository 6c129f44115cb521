//! Progress of a batch job: an `indicatif` bar (rows/s, ETA) on a terminal, plain lines on
//! standard error otherwise (logs, Kubernetes), or nothing.

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A bar on a terminal, lines otherwise.
    Auto,
    Bar,
    Lines,
    None,
}

/// How often a plain progress line is printed.
const LINE_EVERY: Duration = Duration::from_secs(5);

pub enum Progress {
    Bar(ProgressBar),
    Lines {
        total: Option<u64>,
        state: Mutex<(u64, Instant, Instant)>,
    },
    None,
}

impl Progress {
    /// Rows to read in all, when known ahead (Parquet metadata).
    pub fn new(mode: Mode, total: Option<u64>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        match mode {
            Mode::None => Self::None,
            Mode::Bar | Mode::Auto if mode == Mode::Bar || terminal => {
                let bar = match total {
                    Some(total) => ProgressBar::new(total).with_style(
                        ProgressStyle::with_template(
                            "{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}",
                        )
                        .expect("a valid template"),
                    ),
                    None => ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template("{spinner} {pos} rows  {per_sec}")
                            .expect("a valid template"),
                    ),
                };
                Self::Bar(bar)
            }
            _ => {
                let now = Instant::now();
                Self::Lines {
                    total,
                    state: Mutex::new((0, now, now)),
                }
            }
        }
    }

    /// `rows` more rows read (scored or rejected).
    pub fn advance(&self, rows: u64) {
        match self {
            Self::Bar(bar) => bar.inc(rows),
            Self::Lines { total, state } => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                let (done, started, last) = &mut *state;
                *done += rows;
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    let rate = *done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    let of = match total {
                        Some(t) if rate > 0.0 => format!(
                            "/{t} rows, ETA {:.0} s",
                            t.saturating_sub(*done) as f64 / rate
                        ),
                        Some(t) => format!("/{t} rows"),
                        None => " rows".to_string(),
                    };
                    eprintln!("batch: {done}{of} ({rate:.0} rows/s)");
                }
            }
            Self::None => {}
        }
    }

    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish();
        }
    }
}
