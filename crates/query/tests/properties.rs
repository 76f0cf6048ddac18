//! Property test: for random twins and random conditions, the query engine
//! agrees with a direct filter written here, independently, with the same
//! semantics (undefined for missing values and type mismatches, three-valued
//! AND/OR/NOT, IN as membership).

#![allow(clippy::unwrap_used)]

mod common;

use std::cmp::Ordering;

use ferrohub_query::{execute, matches, parse_condition, parse_query};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};

/// Paths as written in the query, and where they point in the twin.
const PATHS: &[(&str, &str)] = &[
    ("tags.devicetype", "/tags/devicetype"),
    ("devices.tags.floor", "/tags/floor"),
    ("tags.floor", "/tags/floor"),
    ("tags.location", "/tags/location"),
    ("tags.location.region", "/tags/location/region"),
    ("tags.missing", "/tags/missing"),
    ("properties.reported.firmware.fwUpdateStatus", "/properties/reported/firmware/fwUpdateStatus"),
    ("Properties.Reported.temperature", "/properties/reported/temperature"),
    ("configurations.[[firmware285]].status", "/configurations/firmware285/status"),
    ("status", "/status"),
    ("STATUS", "/status"),
    ("deviceId", "/deviceId"),
];

const STRINGS: &[&str] = &[
    "chiller", "sensor", "Chiller", "current", "error", "Applied", "Targeted", "enabled", "disabled", "",
    "it's", "a\"b", "US", "d1",
];

const FLOATS: &[f64] = &[2.5, 21.5, -0.5, 100.0, 0.0];

#[derive(Debug, Clone)]
enum Lit {
    /// The string and whether to write it in double quotes.
    Str(&'static str, bool),
    /// The number and whether to write it in hexadecimal (non-negative integers only).
    Num(f64, bool),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Eq,
    Ne,
    /// `<>`: the same as `!=`.
    Ne2,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone)]
enum Cond {
    Cmp(usize, Op, Lit),
    /// Path, list, negated, spelled `NOT IN` (rather than `NIN`) when negated.
    In(usize, Vec<Lit>, bool, bool),
    Defined(usize),
    Not(Box<Cond>),
    /// Operands and whether the keyword is written in lower case.
    And(Box<Cond>, Box<Cond>, bool),
    Or(Box<Cond>, Box<Cond>, bool),
}

// ----- rendering the condition as query text -----

fn quote(s: &str, double: bool) -> String {
    let q = if double { '"' } else { '\'' };
    let mut out = String::from(q);
    for c in s.chars() {
        if c == q || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push(q);
    out
}

fn render_lit(lit: &Lit) -> String {
    match lit {
        Lit::Str(s, double) => quote(s, *double),
        Lit::Num(n, true) if *n >= 0.0 && n.fract() == 0.0 => format!("0x{:X}", *n as u64),
        Lit::Num(n, _) => format!("{n}"),
        Lit::Bool(true) => "true".into(),
        Lit::Bool(false) => "FALSE".into(),
        Lit::Null => "null".into(),
    }
}

fn render(cond: &Cond) -> String {
    match cond {
        Cond::Cmp(p, op, lit) => {
            let op = match op {
                Op::Eq => "=",
                Op::Ne => "!=",
                Op::Ne2 => "<>",
                Op::Lt => "<",
                Op::Le => "<=",
                Op::Gt => ">",
                Op::Ge => ">=",
            };
            format!("{} {op} {}", PATHS[*p].0, render_lit(lit))
        }
        Cond::In(p, list, negated, not_in) => {
            let kw = match (negated, not_in) {
                (false, _) => "IN",
                (true, false) => "NIN",
                (true, true) => "NOT IN",
            };
            let items: Vec<String> = list.iter().map(render_lit).collect();
            format!("{} {kw} [{}]", PATHS[*p].0, items.join(", "))
        }
        Cond::Defined(p) => format!("is_defined({})", PATHS[*p].0),
        Cond::Not(inner) => format!("NOT ({})", render(inner)),
        Cond::And(a, b, lower) => {
            format!("({}) {} ({})", render(a), if *lower { "and" } else { "AND" }, render(b))
        }
        Cond::Or(a, b, lower) => {
            format!("({}) {} ({})", render(a), if *lower { "or" } else { "OR" }, render(b))
        }
    }
}

// ----- the direct filter -----

fn lit_value(lit: &Lit) -> Value {
    match lit {
        Lit::Str(s, _) => json!(s),
        Lit::Num(n, _) => json!(n),
        Lit::Bool(b) => json!(b),
        Lit::Null => Value::Null,
    }
}

/// `Some(ordering)` when `a` and `b` are comparable for ordering;
/// `Err(equal)` when they only compare for equality (nulls, booleans).
fn relate(a: &Value, b: &Value) -> Option<Result<Ordering, bool>> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().unwrap().partial_cmp(&y.as_f64().unwrap()).map(Ok),
        (Value::String(x), Value::String(y)) => Some(Ok(x.cmp(y))),
        (Value::Bool(x), Value::Bool(y)) => Some(Err(x == y)),
        (Value::Null, Value::Null) => Some(Err(true)),
        _ => None,
    }
}

fn direct(cond: &Cond, row: &Value) -> Option<bool> {
    let at = |p: usize| row.pointer(PATHS[p].1);
    match cond {
        Cond::Cmp(p, op, lit) => {
            let relation = relate(at(*p)?, &lit_value(lit))?;
            match (op, relation) {
                (Op::Eq, Ok(o)) => Some(o == Ordering::Equal),
                (Op::Eq, Err(eq)) => Some(eq),
                (Op::Ne | Op::Ne2, Ok(o)) => Some(o != Ordering::Equal),
                (Op::Ne | Op::Ne2, Err(eq)) => Some(!eq),
                (_, Err(_)) => None,
                (Op::Lt, Ok(o)) => Some(o == Ordering::Less),
                (Op::Le, Ok(o)) => Some(o != Ordering::Greater),
                (Op::Gt, Ok(o)) => Some(o == Ordering::Greater),
                (Op::Ge, Ok(o)) => Some(o != Ordering::Less),
            }
        }
        Cond::In(p, list, negated, _) => {
            let v = at(*p)?;
            if v.is_object() || v.is_array() {
                return None;
            }
            let found = list
                .iter()
                .any(|l| matches!(relate(v, &lit_value(l)), Some(Ok(Ordering::Equal)) | Some(Err(true))));
            Some(found != *negated)
        }
        Cond::Defined(p) => Some(at(*p).is_some()),
        Cond::Not(inner) => direct(inner, row).map(|b| !b),
        Cond::And(a, b, _) => match (direct(a, row), direct(b, row)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Cond::Or(a, b, _) => match (direct(a, row), direct(b, row)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
    }
}

// ----- strategies -----

fn lit() -> impl Strategy<Value = Lit> {
    prop_oneof![
        4 => (select(STRINGS), any::<bool>()).prop_map(|(s, d)| Lit::Str(s, d)),
        3 => ((-3i32..30).prop_map(f64::from), any::<bool>()).prop_map(|(n, h)| Lit::Num(n, h)),
        1 => select(FLOATS).prop_map(|n| Lit::Num(n, false)),
        1 => any::<bool>().prop_map(Lit::Bool),
        1 => Just(Lit::Null),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    select(vec![Op::Eq, Op::Ne, Op::Ne2, Op::Lt, Op::Le, Op::Gt, Op::Ge])
}

fn simple() -> impl Strategy<Value = Cond> {
    let path = 0..PATHS.len();
    prop_oneof![
        6 => (path.clone(), op(), lit()).prop_map(|(p, o, l)| Cond::Cmp(p, o, l)),
        2 => (path.clone(), prop::collection::vec(lit(), 0..4), any::<bool>(), any::<bool>())
            .prop_map(|(p, l, n, s)| Cond::In(p, l, n, s)),
        1 => path.prop_map(Cond::Defined),
    ]
}

fn cond() -> impl Strategy<Value = Cond> {
    simple().prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            1 => inner.clone().prop_map(|c| Cond::Not(Box::new(c))),
            2 => (inner.clone(), inner.clone(), any::<bool>()).prop_map(|(a, b, l)| Cond::And(Box::new(a), Box::new(b), l)),
            2 => (inner.clone(), inner, any::<bool>()).prop_map(|(a, b, l)| Cond::Or(Box::new(a), Box::new(b), l)),
        ]
    })
}

/// A value for a twin field, or `None` for "absent".
fn field() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(None),
        4 => select(STRINGS).prop_map(|s| Some(json!(s))),
        3 => (-3i64..30).prop_map(|n| Some(json!(n))),
        1 => select(FLOATS).prop_map(|n| Some(json!(n))),
        1 => any::<bool>().prop_map(|b| Some(json!(b))),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(json!({"region": "US"}))),
        1 => Just(Some(json!(["US", 1]))),
    ]
}

fn twin() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        [field(), field(), field()],
        [field(), field()],
        prop_oneof![Just(None), Just(Some("Applied")), Just(Some("Targeted"))],
    )
        .prop_map(|(disabled, [devicetype, floor, location], [fw_status, temperature], config)| {
            let mut tags = Map::new();
            for (key, value) in [("devicetype", devicetype), ("floor", floor), ("location", location)] {
                if let Some(value) = value {
                    tags.insert(key.into(), value);
                }
            }
            let mut reported = Map::new();
            if let Some(status) = fw_status {
                reported.insert(
                    "firmware".into(),
                    json!({"fwUpdateStatus": status, "currentFwVersion": "1.0.0"}),
                );
            }
            if let Some(t) = temperature {
                reported.insert("temperature".into(), t);
            }
            let mut t = common::twin("d").tags(Value::Object(tags)).reported(Value::Object(reported));
            if disabled {
                t = t.status("disabled");
            }
            if let Some(status) = config {
                t = t.config("firmware285", status);
            }
            t.render()
        })
}

fn fleet() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(twin(), 0..40).prop_map(|mut twins| {
        for (i, t) in twins.iter_mut().enumerate() {
            t["deviceId"] = json!(format!("d{i}"));
        }
        twins
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn count_equals_a_direct_filter(twins in fleet(), cond in cond()) {
        let text = render(&cond);
        let expected: Vec<&str> = twins
            .iter()
            .filter(|t| direct(&cond, t) == Some(true))
            .map(|t| t["deviceId"].as_str().unwrap())
            .collect();

        let count = parse_query(&format!("SELECT COUNT() AS n FROM devices WHERE {text}")).unwrap();
        let result = execute(&count, twins.iter()).unwrap();
        prop_assert_eq!(result.items, vec![json!({"n": expected.len()})], "{}", text);

        let select = parse_query(&format!("select deviceId from devices where {text}")).unwrap();
        let result = execute(&select, twins.iter()).unwrap();
        let ids: Vec<&str> = result.items.iter().map(|r| r["deviceId"].as_str().unwrap()).collect();
        prop_assert_eq!(&ids, &expected, "{}", text);

        let condition = parse_condition(&text).unwrap();
        for t in &twins {
            prop_assert_eq!(matches(&condition, t), direct(&cond, t) == Some(true), "{} on {}", text, t);
        }
    }

    #[test]
    fn not_selects_exactly_the_false_rows(twins in fleet(), cond in cond()) {
        let text = format!("NOT ({})", render(&cond));
        let condition = parse_condition(&text).unwrap();
        for t in &twins {
            prop_assert_eq!(matches(&condition, t), direct(&cond, t) == Some(false), "{} on {}", text, t);
        }
    }
}
