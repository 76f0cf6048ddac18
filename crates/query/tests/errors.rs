//! Error messages: each names the byte position and, for syntax errors, the
//! token expected and the one found.

#![allow(clippy::unwrap_used)]

use ferrohub_query::{parse_condition, parse_query, MAX_QUERY_CHARS};

const QUERY_ERRORS: &[(&str, usize, &str)] = &[
    ("", 0, "Syntax error at position 0: expected SELECT, found end of input"),
    ("SELEC * FROM devices", 0, "Syntax error at position 0: expected SELECT, found 'SELEC'"),
    (
        "SELECT",
        6,
        "Syntax error at position 6: expected '*' or a list of values to select after 'SELECT', found end of input",
    ),
    (
        "SELECT * FROM devices WHERE",
        27,
        "Syntax error at position 27: expected an expression after 'WHERE', found end of input",
    ),
    (
        "SELECT * FROM devices WHERE tags.x =",
        36,
        "Syntax error at position 36: expected an expression after '=', found end of input",
    ),
    (
        "SELECT * FROM devices WHERE tags.x = 'a' AND",
        44,
        "Syntax error at position 44: expected an expression after 'AND', found end of input",
    ),
    ("SELECT * FROM devices WHERE NOT", 31, "Syntax error at position 31: expected an expression after 'NOT', found end of input"),
    ("SELECT * devices", 9, "Syntax error at position 9: expected FROM after '*', found 'devices'"),
    (
        "SELECT * FROM",
        13,
        "Syntax error at position 13: expected 'devices', 'devices.modules' or 'devices.jobs' after 'FROM', found end of input",
    ),
    (
        "SELECT * FROM twins",
        14,
        "Syntax error at position 14: expected 'devices', 'devices.modules' or 'devices.jobs' after 'FROM', found 'twins'",
    ),
    ("SELECT * FROM devices.foo", 22, "Syntax error at position 22: expected 'modules' or 'jobs' after '.', found 'foo'"),
    (
        "SELECT * FROM devices WHERE (tags.x = 1",
        39,
        "Syntax error at position 39: expected ')' closing the '(' at position 28 after '1', found end of input",
    ),
    (
        "SELECT * FROM devices WHERE tags.x = 1)",
        38,
        "Syntax error at position 38: expected an operator, GROUP BY or end of input after '1', found ')'",
    ),
    (
        "SELECT * FROM devices WHERE tags.x = 1 ORDER BY deviceId",
        39,
        "Syntax error at position 39: expected an operator, GROUP BY or end of input after '1', found 'ORDER'",
    ),
    (
        "SELECT * FROM devices x",
        22,
        "Syntax error at position 22: expected WHERE, GROUP BY or end of input after 'devices', found 'x'",
    ),
    (
        "SELECT * FROM devices WHERE tags.x IN ('a', 'b')",
        38,
        "Syntax error at position 38: expected '[' starting a list of constants after 'IN', found '('",
    ),
    (
        "SELECT * FROM devices WHERE tags.x IN ['a' 'b']",
        43,
        "Syntax error at position 43: expected ',' or ']' after ''a'', found ''b''",
    ),
    (
        "SELECT * FROM devices WHERE tags.x IN [tags.y]",
        39,
        "Syntax error at position 39: expected a constant (string, number, true, false, null or array) after '[', found 'tags'",
    ),
    ("SELECT * FROM devices WHERE tags. = 1", 34, "Syntax error at position 34: expected a property name after '.', found '='"),
    ("SELECT * FROM devices WHERE tags.x == 1", 36, "Syntax error at position 36: expected an expression after '=', found '='"),
    (
        "SELECT * FROM devices WHERE group = 1",
        28,
        "Syntax error at position 28: expected an expression after 'WHERE', found 'group' (a keyword: write [[group]] for a property of that name)",
    ),
    ("SELECT deviceId tags.x FROM devices", 16, "Syntax error at position 16: expected AS, ',' or FROM after 'deviceId', found 'tags'"),
    ("SELECT deviceId AS FROM devices", 19, "Syntax error at position 19: expected a name after 'AS', found 'FROM'"),
    ("SELECT deviceId AS id tags FROM devices", 22, "Syntax error at position 22: expected ',' or FROM after 'id', found 'tags'"),
    ("SELECT TOP FROM devices", 11, "Syntax error at position 11: expected a number after 'TOP', found 'FROM'"),
    ("SELECT TOP 2.5 * FROM devices", 11, "Error at position 11: TOP needs a whole number, found '2.5'"),
    ("SELECT TOP -1 * FROM devices", 11, "Syntax error at position 11: expected a number after 'TOP', found '-'"),
    ("SELECT * FROM devices WHERE FOO(tags.x)", 28, "Error at position 28: unknown function 'FOO'"),
    ("SELECT * FROM devices WHERE IS_DEFINED()", 28, "Error at position 28: IS_DEFINED() takes 1 argument, found 0"),
    ("SELECT * FROM devices WHERE startswith(deviceId)", 28, "Error at position 28: STARTSWITH() takes 2 arguments, found 1"),
    ("SELECT * FROM devices WHERE CONCAT(deviceId)", 28, "Error at position 28: CONCAT() takes at least 2 arguments, found 1"),
    (
        "SELECT * FROM devices WHERE COUNT() = 1",
        28,
        "Error at position 28: the aggregate COUNT() is only allowed as an element of the SELECT list",
    ),
    ("SELECT COUNT(deviceId) FROM devices", 13, "Error at position 13: COUNT() takes no argument"),
    ("SELECT COUNT() + 1 AS n FROM devices", 15, "Syntax error at position 15: expected AS, ',' or FROM after ')', found '+'"),
    ("SELECT * FROM devices GROUP BY tags.x", 22, "Error at position 22: SELECT * cannot be combined with GROUP BY"),
    (
        "SELECT deviceId, COUNT() AS n FROM devices",
        7,
        "Error at position 7: 'deviceId' cannot be selected next to an aggregate without GROUP BY",
    ),
    (
        "SELECT deviceId, COUNT() AS n FROM devices GROUP BY tags.x",
        7,
        "Error at position 7: 'deviceId' is neither in GROUP BY nor inside an aggregate",
    ),
    ("SELECT COUNT() AS n FROM devices GROUP tags.x", 39, "Syntax error at position 39: expected BY after 'GROUP', found 'tags'"),
    (
        "SELECT COUNT() AS n FROM devices GROUP BY",
        41,
        "Syntax error at position 41: expected a property path after 'BY', found end of input",
    ),
    (
        "SELECT COUNT() AS n FROM devices GROUP BY tags.x tags.y",
        49,
        "Syntax error at position 49: expected ',' or end of input after 'x', found 'tags'",
    ),
    ("SELECT tags.x, properties.reported.x FROM devices", 15, "Error at position 15: duplicate output name 'x' (use AS to rename)"),
    ("SELECT COUNT(), COUNT() AS [[$1]] FROM devices", 16, "Error at position 16: duplicate output name '$1' (use AS to rename)"),
    (
        "SELECT deviceId FROM devices.jobs",
        7,
        "Error at position 7: FROM devices.jobs allows only SELECT * (no projections, aggregates or GROUP BY)",
    ),
    ("SELECT COUNT() AS n FROM devices.modules GROUP BY moduleId", 41, "Error at position 41: GROUP BY is only supported FROM devices"),
    (
        "SELECT * FROM devices WHERE tags.x = 'abc",
        37,
        "Syntax error at position 37: unterminated string: expected a closing ' before the end of input",
    ),
    (
        "SELECT * FROM devices WHERE configurations.[[cfg.status = 'x'",
        43,
        "Syntax error at position 43: unterminated '[[': expected ']]' to close the segment name",
    ),
    ("SELECT * FROM devices WHERE tags.x IN [-'a']", 40, "Syntax error at position 40: expected a number after '-', found ''a''"),
    (
        "SELECT * FROM devices WHERE tags.x = 'a very long string that goes on and on and on and on' tags",
        92,
        "Syntax error at position 92: expected an operator, GROUP BY or end of input after ''a very long string that goes on and on …', found 'tags'",
    ),
    // Positions are byte offsets ('é' is two bytes).
    ("SELECT * FROM devices WHERE deviceId = 'é' #", 44, "Syntax error at position 44: unexpected character '#'"),
];

const CONDITION_ERRORS: &[(&str, usize, &str)] = &[
    ("", 0, "Syntax error at position 0: expected an expression, found end of input"),
    ("tags.x = 1 tags", 11, "Syntax error at position 11: expected an operator or end of input after '1', found 'tags'"),
    ("tags.x =", 8, "Syntax error at position 8: expected an expression after '=', found end of input"),
    (
        "SELECT * FROM devices",
        0,
        "Syntax error at position 0: expected a condition (written without SELECT … WHERE, e.g. tags.x = 'y'), found 'SELECT'",
    ),
    (
        "WHERE tags.x = 1",
        0,
        "Syntax error at position 0: expected a condition (written without SELECT … WHERE, e.g. tags.x = 'y'), found 'WHERE'",
    ),
    ("* AND tags.x = 1", 0, "Syntax error at position 0: expected an expression, found '*'"),
];

#[test]
fn query_errors_name_the_position_and_the_expected_token() {
    let mut failures = Vec::new();
    for &(query, position, message) in QUERY_ERRORS {
        match parse_query(query) {
            Ok(q) => failures.push(format!("{query}\n  parsed: {q:?}")),
            Err(e) if e.position != position || e.message != message || e.to_string() != message => failures
                .push(format!(
                    "{query}\n  expected {position}: {message}\n  got      {}: {}",
                    e.position, e.message
                )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn condition_errors_name_the_position_and_the_expected_token() {
    for &(condition, position, message) in CONDITION_ERRORS {
        let e = parse_condition(condition).unwrap_err();
        assert_eq!((e.position, e.message.as_str()), (position, message), "{condition}");
    }
}

#[test]
fn queries_longer_than_8192_characters_are_refused() {
    let prefix = "SELECT * FROM devices WHERE deviceId = '";
    // Exactly 8192 characters (multi-byte ones count once) is fine.
    let fill = MAX_QUERY_CHARS - prefix.len() - 1;
    let at_limit = format!("{prefix}{}'", "é".repeat(fill));
    assert_eq!(at_limit.chars().count(), MAX_QUERY_CHARS);
    assert!(parse_query(&at_limit).is_ok());
    let over = format!("{prefix}{}'", "é".repeat(fill + 1));
    let e = parse_query(&over).unwrap_err();
    assert_eq!(
        e.message,
        format!(
            "Error at position {}: the query is longer than 8192 characters (8193 characters)",
            e.position
        )
    );
    assert_eq!(&over[e.position..], "'");
    assert!(parse_condition(&"x".repeat(MAX_QUERY_CHARS + 1)).is_err());
}
