//! Rendering results as az does: `-o json` (indented), `-o table` (knack's
//! automatic table: scalar fields, keys sorted, `id`/`type`/`etag` skipped,
//! tabulate's "simple" layout) and `-o tsv` (knack's TSV: one line per item,
//! an object's values in key order, nested objects empty, lists as their
//! length).

use serde_json::{Map, Value};

use super::args::OutputFormat;

/// The text to print for `value` in `format`; empty for `-o none`.
pub(crate) fn render(value: &Value, format: OutputFormat) -> String {
    match format {
        OutputFormat::Json | OutputFormat::Jsonc => json(value),
        OutputFormat::Table => table(value),
        OutputFormat::Tsv => tsv(value),
        OutputFormat::None => String::new(),
    }
}

fn json(value: &Value) -> String {
    // serde_json's pretty printer indents by two spaces, as az does.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// Python's `str()` of a JSON scalar, which is what knack writes.
fn python_str(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(_) | Value::Object(_) => value.to_string(),
    }
}

fn sorted(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

fn tsv(value: &Value) -> String {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut out = String::new();
    for item in items {
        let cells: Vec<String> = match item {
            Value::Object(map) => sorted(map).into_iter().map(|(_, v)| tsv_cell(v)).collect(),
            Value::Array(values) => values.iter().map(tsv_cell).collect(),
            Value::Bool(b) => vec![b.to_string()],
            other => vec![tsv_cell(other)],
        };
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    out
}

fn tsv_cell(value: &Value) -> String {
    match value {
        Value::Array(items) => items.len().to_string(),
        Value::Object(_) => String::new(),
        scalar => python_str(scalar),
    }
}

/// Keys knack leaves out of automatic tables.
const TABLE_SKIP_KEYS: [&str; 3] = ["id", "type", "etag"];

fn capitalize_first(key: &str) -> String {
    let mut chars = key.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One table row: (column header, cell text, right-aligned?).
fn table_row(item: &Value) -> Vec<(String, String, bool)> {
    match item {
        Value::Object(map) => sorted(map)
            .into_iter()
            .filter(|(k, v)| {
                !TABLE_SKIP_KEYS.contains(&k.as_str())
                    && !matches!(v, Value::Null | Value::Array(_) | Value::Object(_))
            })
            .map(|(k, v)| (capitalize_first(k), python_str(v), v.is_number()))
            .collect(),
        Value::Array(values) => values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("Column{}", i + 1), python_str(v), v.is_number()))
            .collect(),
        scalar => vec![("Result".into(), python_str(scalar), scalar.is_number())],
    }
}

fn table(value: &Value) -> String {
    let rows: Vec<Vec<(String, String, bool)>> = match value {
        Value::Array(items) => items.iter().map(table_row).collect(),
        Value::Null => Vec::new(),
        other => vec![table_row(other)],
    };
    // Columns in order of first appearance, as tabulate does for dicts.
    let mut headers: Vec<String> = Vec::new();
    for row in &rows {
        for (h, _, _) in row {
            if !headers.contains(h) {
                headers.push(h.clone());
            }
        }
    }
    if headers.is_empty() {
        return String::new();
    }
    let cell = |row: &[(String, String, bool)], h: &str| {
        row.iter().find(|(k, _, _)| k == h).map(|(_, v, num)| (v.clone(), *num)).unwrap_or_default()
    };
    let widths: Vec<usize> = headers
        .iter()
        .map(|h| {
            rows.iter().map(|r| cell(r, h).0.chars().count()).chain([h.chars().count()]).max().unwrap_or(0)
        })
        .collect();
    let numeric: Vec<bool> = headers
        .iter()
        .map(|h| {
            let cells: Vec<_> = rows.iter().map(|r| cell(r, h)).filter(|(v, _)| !v.is_empty()).collect();
            !cells.is_empty() && cells.iter().all(|(_, num)| *num)
        })
        .collect();
    let pad = |text: &str, width: usize, right: bool| {
        let fill = " ".repeat(width.saturating_sub(text.chars().count()));
        if right {
            format!("{fill}{text}")
        } else {
            format!("{text}{fill}")
        }
    };
    let mut lines = Vec::with_capacity(rows.len() + 2);
    lines.push(
        headers.iter().zip(&widths).zip(&numeric).map(|((h, w), n)| pad(h, *w, *n)).collect::<Vec<_>>(),
    );
    lines.push(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in &rows {
        lines.push(
            headers
                .iter()
                .zip(&widths)
                .zip(&numeric)
                .map(|((h, w), n)| pad(&cell(row, h).0, *w, *n))
                .collect(),
        );
    }
    let mut out = String::new();
    for line in lines {
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_indented_by_two_spaces() {
        let text = render(&json!({"connectionString": "HostName=h"}), OutputFormat::Json);
        assert_eq!(text, "{\n  \"connectionString\": \"HostName=h\"\n}\n");
    }

    #[test]
    fn tsv_of_a_single_field_object_is_the_bare_value() {
        let text = render(&json!({"connectionString": "HostName=h;DeviceId=d"}), OutputFormat::Tsv);
        assert_eq!(text, "HostName=h;DeviceId=d\n");
    }

    #[test]
    fn tsv_sorts_keys_blanks_objects_counts_lists() {
        let v = json!({"b": 2, "a": "x", "c": {"n": 1}, "d": [1, 2, 3], "e": null, "f": true});
        assert_eq!(render(&v, OutputFormat::Tsv), "x\t2\t\t3\tNone\tTrue\n");
    }

    #[test]
    fn tsv_of_a_list_is_one_line_per_item() {
        let v = json!([{"deviceId": "d1", "status": "enabled"}, {"deviceId": "d2", "status": "disabled"}]);
        assert_eq!(render(&v, OutputFormat::Tsv), "d1\tenabled\nd2\tdisabled\n");
    }

    #[test]
    fn table_shows_sorted_scalar_columns_without_etag() {
        let v = json!([
            {"deviceId": "dev1", "etag": "AAA", "status": "enabled", "cloudToDeviceMessageCount": 0,
             "authentication": {"type": "sas"}},
            {"deviceId": "device-two", "etag": "BBB", "status": "disabled", "cloudToDeviceMessageCount": 12},
        ]);
        let text = render(&v, OutputFormat::Table);
        let expected = "\
CloudToDeviceMessageCount  DeviceId    Status
-------------------------  ----------  --------
                        0  dev1        enabled
                       12  device-two  disabled
";
        assert_eq!(text, expected);
    }

    #[test]
    fn table_of_an_object_is_one_row_and_of_a_scalar_a_result_column() {
        let text = render(&json!({"sas": "SharedAccessSignature sr=x"}), OutputFormat::Table);
        assert_eq!(text, "Sas\n--------------------------\nSharedAccessSignature sr=x\n");
        assert_eq!(render(&json!("hi"), OutputFormat::Table), "Result\n------\nhi\n");
        assert_eq!(render(&json!([]), OutputFormat::Table), "");
    }

    #[test]
    fn none_prints_nothing() {
        assert_eq!(render(&json!({"a": 1}), OutputFormat::None), "");
    }
}
