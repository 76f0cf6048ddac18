//! The fuzzing entry point, shared by `fuzz/fuzz_targets/query.rs` and the
//! corpus replay test (`tests/corpus.rs`).

use serde_json::{json, Value};

use crate::{evaluate, execute, matches, parse_condition, parse_query};

/// A few twins as `TwinState::to_json` renders them, with values of every
/// JSON type where paths may meet them.
fn rows() -> [Value; 3] {
    [
        json!({
            "deviceId": "d1", "status": "enabled", "version": 3,
            "tags": {"site": "a", "n": 1.5, "list": [1, "x"], "o": {"k": null}},
            "properties": {
                "desired": {"fw": "1.0", "$version": 2, "$metadata": {"$lastUpdated": "2024-01-01T00:00:00Z"}},
                "reported": {"fw": "0.9", "battery": 90, "$version": 4}
            },
            "configurations": {"c1": {"status": "Applied"}}
        }),
        json!({"deviceId": "d2", "status": "disabled", "tags": {"site": "b", "n": -3}, "properties": {"desired": {}, "reported": {}}}),
        json!({"deviceId": "d3", "tags": {"site": null, "n": "7"}}),
    ]
}

/// Feeds text as a query and as a condition; queries run over [`rows`].
///
/// Must never panic. Invariants: [`matches`] is `evaluate == true`; `NOT
/// (c)` is the three-valued negation of `c` (undefined stays undefined);
/// `SELECT * FROM devices WHERE c` returns exactly the rows `c` matches.
pub fn fuzz_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let rows = rows();
    if let Ok(query) = parse_query(&text) {
        let _ = query.paths();
        let _ = execute(&query, rows.iter());
        let _ = execute(&query, [].iter());
    }
    let Ok(condition) = parse_condition(&text) else { return };
    let negated = parse_condition(&format!("NOT ({text})")).ok();
    let wrapped = parse_query(&format!("SELECT * FROM devices WHERE {text}")).ok();
    let mut matching = 0;
    for row in &rows {
        let value = evaluate(&condition, row);
        let hit = matches(&condition, row);
        assert_eq!(hit, value == Some(Value::Bool(true)), "matches is evaluate == true");
        matching += usize::from(hit);
        if let Some(negated) = &negated {
            let expected = match value {
                Some(Value::Bool(b)) => Some(Value::Bool(!b)),
                _ => None,
            };
            assert_eq!(evaluate(negated, row), expected, "NOT is the three-valued negation");
        }
    }
    if let Some(Ok(result)) = wrapped.map(|q| execute(&q, rows.iter())) {
        assert_eq!(result.items.len(), matching, "WHERE keeps the rows the condition matches");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_assorted_inputs() {
        for text in [
            "",
            "*",
            "SELECT * FROM devices WHERE tags.site = 'a'",
            "SELECT COUNT() AS n, tags.site FROM devices GROUP BY tags.site",
            "tags.n > 1 AND NOT IS_DEFINED(tags.o.k)",
            "SUBSTRING(deviceId, -1, 99) = 'd'",
            "tags.n / 0 = 1 OR tags.list IN [1, [1, 'x']]",
            "((((",
            "'unterminated",
        ] {
            fuzz_query(text.as_bytes());
        }
    }
}
