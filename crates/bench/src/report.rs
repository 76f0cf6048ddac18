//! A scenario's result: the parameters it ran with and named values,
//! printed as a two-column table and written as JSON.

use std::fmt::Display;
use std::path::Path;

use serde_json::{json, Map, Value};

/// One scenario's numbers.
pub(crate) struct Report {
    scenario: String,
    params: Value,
    rows: Vec<(String, Value)>,
}

impl Report {
    /// A report for `scenario` run with `params`.
    pub(crate) fn new(scenario: &str, params: Value) -> Self {
        Self { scenario: scenario.to_owned(), params, rows: Vec::new() }
    }

    /// Adds a named value (numbers stay numbers in the JSON).
    pub(crate) fn row(&mut self, name: &str, value: impl Into<Value>) {
        self.rows.push((name.to_owned(), value.into()));
    }

    /// Adds a value shown with a fixed number of decimals.
    pub(crate) fn decimal(&mut self, name: &str, value: f64, decimals: usize) {
        let rounded: f64 = format!("{value:.decimals$}").parse().unwrap_or(value);
        self.rows.push((name.to_owned(), json!(rounded)));
    }

    /// Prints the table and writes `DIR/<scenario>.json`.
    pub(crate) fn finish(&self, dir: &Path) -> anyhow::Result<()> {
        print!("{}", self.table());
        std::fs::create_dir_all(dir)?;
        let mut results = Map::new();
        for (name, value) in &self.rows {
            results.insert(name.clone(), value.clone());
        }
        let doc = json!({"scenario": self.scenario, "params": self.params, "results": results});
        let path = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
        println!("wrote {}", path.display());
        Ok(())
    }

    fn table(&self) -> String {
        let width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = format!("== {} {}\n", self.scenario, self.params);
        for (name, value) in &self.rows {
            out.push_str(&format!("  {name:<width$}  {}\n", Shown(value)));
        }
        out
    }
}

/// A JSON value as a table cell: strings without quotes.
struct Shown<'a>(&'a Value);

impl Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Value::String(s) => f.write_str(s),
            other => write!(f, "{other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_table_and_the_json_hold_the_same_numbers() {
        let dir = std::env::temp_dir().join(format!("ferrohub-bench-report-{}", std::process::id()));
        let mut r = Report::new("demo", json!({"n": 3}));
        r.row("connections", 3);
        r.decimal("rate", 1234.5678, 1);
        r.row("note", "ok");
        let table = r.table();
        assert!(table.contains("connections  3"), "{table}");
        assert!(table.contains("rate         1234.6"), "{table}");
        r.finish(&dir).unwrap();
        let doc: Value = serde_json::from_slice(&std::fs::read(dir.join("demo.json")).unwrap()).unwrap();
        assert_eq!(doc["results"]["rate"], 1234.6);
        assert_eq!(doc["params"]["n"], 3);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
