//! A live progress view shared by the `--watch` commands: a list of rows
//! (label, value, optional total, optional note) drawn as one progress bar
//! each on a terminal, or as one plain, greppable line per change when
//! stdout is a pipe or a file:
//!
//! ```text
//! 2026-11-27T01:02:03Z current=12/100 error=1/100 targetedCount=100
//! ```
//!
//! Callers render their object into rows on every snapshot and call
//! [`ProgressView::update`]; the view decides what to draw.

use std::io::{IsTerminal as _, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use ferrohub_core::time::Timestamp;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// One line of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// What is counted, e.g. a metric name.
    pub(crate) label: String,
    /// How many so far.
    pub(crate) value: u64,
    /// Out of how many, when known (a bar needs it; otherwise just the count).
    pub(crate) total: Option<u64>,
    /// A short remark shown after the numbers (e.g. a state).
    pub(crate) note: Option<String>,
    /// Drawn emphasised (the row the user asked about).
    pub(crate) highlight: bool,
}

impl Row {
    /// A row with no note and no emphasis.
    pub(crate) fn new(label: impl Into<String>, value: u64, total: Option<u64>) -> Self {
        Self { label: label.into(), value, total, note: None, highlight: false }
    }
}

/// Where the rows go.
enum Mode {
    /// Bars on a terminal, rebuilt when the set of labels changes.
    Bars { multi: MultiProgress, bars: Vec<(String, ProgressBar)> },
    /// One line per change; `last` is the previous line without its time.
    Lines { last: Option<String> },
}

/// The view; see the module doc.
pub(crate) struct ProgressView {
    mode: Mode,
}

impl ProgressView {
    /// Bars when stdout is a terminal, plain lines otherwise.
    pub(crate) fn for_stdout() -> Self {
        if std::io::stdout().is_terminal() {
            Self { mode: Mode::Bars { multi: MultiProgress::new(), bars: Vec::new() } }
        } else {
            Self { mode: Mode::Lines { last: None } }
        }
    }

    /// Shows `rows`: redraws the bars, or prints a line if anything changed
    /// since the last one.
    pub(crate) fn update(&mut self, rows: &[Row]) {
        match &mut self.mode {
            Mode::Lines { last } => {
                if let Some(line) = changed_line(last, rows) {
                    let mut out = std::io::stdout().lock();
                    // A closed pipe ends nothing here: the watch decides when to stop.
                    let _ = writeln!(out, "{} {line}", now_seconds()).and_then(|()| out.flush());
                }
            }
            Mode::Bars { multi, bars } => {
                let same_rows = bars.len() == rows.len()
                    && bars.iter().zip(rows).all(|((label, _), row)| *label == row.label);
                if !same_rows {
                    for (_, bar) in bars.drain(..) {
                        multi.remove(&bar);
                    }
                    for row in rows {
                        let bar = multi.add(ProgressBar::new(0));
                        bar.set_style(style(row));
                        bar.set_prefix(row.label.clone());
                        bars.push((row.label.clone(), bar));
                    }
                }
                for ((_, bar), row) in bars.iter().zip(rows) {
                    bar.set_length(row.total.unwrap_or(row.value).max(row.value));
                    bar.set_position(row.value);
                    bar.set_message(row.note.clone().unwrap_or_default());
                }
            }
        }
    }

    /// A line of text outside the rows (above the bars on a terminal).
    pub(crate) fn println(&self, text: &str) {
        match &self.mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Mode::Lines { .. } => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{} {text}", now_seconds()).and_then(|()| out.flush());
            }
        }
    }

    /// Leaves the bars on screen as they are (call before exiting, also on
    /// errors: dropped bars would be wiped).
    pub(crate) fn finish(&mut self) {
        if let Mode::Bars { bars, .. } = &mut self.mode {
            for (_, bar) in bars.drain(..) {
                bar.abandon();
            }
        }
    }
}

fn style(row: &Row) -> ProgressStyle {
    let template = match (row.total.is_some(), row.highlight) {
        (true, true) => "{prefix:>20.bold} [{bar:40.green/white}] {pos}/{len} {msg}",
        (true, false) => "{prefix:>20} [{bar:40.cyan/blue}] {pos}/{len} {msg}",
        (false, true) => "{prefix:>20.bold} {pos} {msg}",
        (false, false) => "{prefix:>20} {pos} {msg}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The rows as `label=value/total (note)` separated by spaces (no time).
pub(crate) fn plain_line(rows: &[Row]) -> String {
    let cells: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut cell = match r.total {
                Some(total) => format!("{}={}/{total}", r.label, r.value),
                None => format!("{}={}", r.label, r.value),
            };
            if let Some(note) = &r.note {
                cell.push_str(&format!(" ({note})"));
            }
            cell
        })
        .collect();
    cells.join(" ")
}

/// The line for `rows` if it differs from the `last` one printed (which
/// it then becomes): a snapshot that changed nothing shown prints nothing.
fn changed_line(last: &mut Option<String>, rows: &[Row]) -> Option<String> {
    let line = plain_line(rows);
    if last.as_deref() == Some(line.as_str()) {
        return None;
    }
    *last = Some(line.clone());
    Some(line)
}

/// Now in UTC to the second, e.g. `2026-11-27T01:02:03Z`.
fn now_seconds() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let iso = Timestamp::from_unix_nanos(i128::try_from(nanos).unwrap_or_default()).to_iso();
    // `YYYY-MM-DDTHH:MM:SS` is the first 19 characters of the IoT Hub form.
    format!("{}Z", iso.get(..19).unwrap_or(&iso))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_list_every_row_in_order() {
        let mut rows = vec![Row::new("current", 12, Some(100)), Row::new("error", 1, Some(100))];
        rows.push(Row { note: Some("halted".into()), ..Row::new("wave", 2, None) });
        assert_eq!(plain_line(&rows), "current=12/100 error=1/100 wave=2 (halted)");
        assert_eq!(plain_line(&[]), "");
    }

    #[test]
    fn a_line_is_printed_only_when_something_shown_changed() {
        let mut last = None;
        let rows = [Row::new("current", 1, Some(2))];
        assert_eq!(changed_line(&mut last, &rows).as_deref(), Some("current=1/2"));
        assert_eq!(changed_line(&mut last, &rows), None);
        let rows = [Row::new("current", 2, Some(2))];
        assert_eq!(changed_line(&mut last, &rows).as_deref(), Some("current=2/2"));
    }

    #[test]
    fn the_time_stamp_is_utc_to_the_second() {
        let t = now_seconds();
        assert_eq!(t.len(), 20, "{t}");
        assert!(Timestamp::parse(&t).is_some(), "{t}");
    }
}
