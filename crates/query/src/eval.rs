//! Evaluation of expressions over one row (a twin's JSON document).
//!
//! Values are borrowed from the row and from the expression's constants;
//! nothing is cloned and path lookups do not allocate. Only functions that
//! build strings (`LOWER`, `UPPER`, `CONCAT`, `SUBSTRING`) allocate.
//!
//! The rules (see the crate docs for the full list and reasons):
//! - a missing property, or a path through a non-object, is `undefined`;
//! - `=`, `!=`/`<>` compare two values of the same primitive type (null,
//!   boolean, number, string); `< <= > >=` compare two numbers or two
//!   strings (ordinal, case-sensitive); anything else is `undefined`;
//! - `AND`/`OR`/`NOT` are three-valued: `false AND x` is false, `true OR x`
//!   is true, `NOT undefined` is undefined; non-boolean operands count as
//!   undefined;
//! - a row passes a condition only when it evaluates to boolean `true`.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use crate::ast::{BinaryOp, Expr, Function, Literal, Path, UnaryOp};

/// True when `condition` evaluates to boolean `true` on `row`. This is the
/// WHERE test; a configuration's target condition and each metric query's
/// filter are checked with it, one twin at a time.
pub fn matches(condition: &Expr, row: &Value) -> bool {
    truth(condition, row) == Some(true)
}

/// The value of `expr` on `row`, or `None` when it is `undefined`.
pub fn evaluate(expr: &Expr, row: &Value) -> Option<Value> {
    to_json(eval(expr, row))
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val<'a> {
    Undefined,
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'a, str>),
    Array(Arr<'a>),
    Object(&'a Map<String, Value>),
}

/// An array: from the row, or an array constant of the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Arr<'a> {
    Json(&'a [Value]),
    Lit(&'a [Literal]),
}

impl Val<'_> {
    fn is_primitive(&self) -> bool {
        matches!(self, Val::Null | Val::Bool(_) | Val::Num(_) | Val::Str(_))
    }
}

/// The value at `path` in `row`, walking objects only.
pub(crate) fn lookup<'a>(path: &Path, row: &'a Value) -> Option<&'a Value> {
    let mut current = row;
    for segment in &path.segments {
        current = get(current.as_object()?, segment)?;
    }
    Some(current)
}

/// `map[key]`. Twin objects are mostly small; a scan over the map's
/// contiguous entries beats hashing the key for them.
fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if map.len() <= 32 {
        map.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

fn from_json(value: &Value) -> Val<'_> {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => n.as_f64().map_or(Val::Undefined, Val::Num),
        Value::String(s) => Val::Str(Cow::Borrowed(s)),
        Value::Array(items) => Val::Array(Arr::Json(items)),
        Value::Object(map) => Val::Object(map),
    }
}

fn from_literal(literal: &Literal) -> Val<'_> {
    match literal {
        Literal::Undefined => Val::Undefined,
        Literal::Null => Val::Null,
        Literal::Bool(b) => Val::Bool(*b),
        Literal::Number(n) => Val::Num(*n),
        Literal::String(s) => Val::Str(Cow::Borrowed(s)),
        Literal::Array(items) => Val::Array(Arr::Lit(items)),
    }
}

pub(crate) fn eval<'a>(expr: &'a Expr, row: &'a Value) -> Val<'a> {
    match expr {
        Expr::Literal(literal) => from_literal(literal),
        Expr::Path(path) => lookup(path, row).map_or(Val::Undefined, from_json),
        Expr::Unary { op: UnaryOp::Neg, expr } => match eval(expr, row) {
            Val::Num(n) => Val::Num(-n),
            _ => Val::Undefined,
        },
        Expr::Binary { op, left, right } if is_arithmetic(*op) => {
            arithmetic(*op, eval(left, row), eval(right, row))
        }
        Expr::Call { func, args } => call(*func, args, row),
        _ => truth(expr, row).map_or(Val::Undefined, Val::Bool),
    }
}

fn is_arithmetic(op: BinaryOp) -> bool {
    matches!(op, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod)
}

/// An expression in a boolean position: `Some(b)` for a boolean, `None` for
/// undefined or any other type. `AND`/`OR` short-circuit.
fn truth(expr: &Expr, row: &Value) -> Option<bool> {
    match expr {
        Expr::Binary { op: BinaryOp::And, left, right } => match truth(left, row) {
            Some(false) => Some(false),
            l => match truth(right, row) {
                Some(false) => Some(false),
                Some(true) if l == Some(true) => Some(true),
                _ => None,
            },
        },
        Expr::Binary { op: BinaryOp::Or, left, right } => match truth(left, row) {
            Some(true) => Some(true),
            l => match truth(right, row) {
                Some(true) => Some(true),
                Some(false) if l == Some(false) => Some(false),
                _ => None,
            },
        },
        Expr::Unary { op: UnaryOp::Not, expr } => truth(expr, row).map(|b| !b),
        Expr::Binary { op, left, right } if !is_arithmetic(*op) => {
            compare(*op, &eval(left, row), &eval(right, row))
        }
        Expr::In { expr, list, negated } => {
            let value = eval(expr, row);
            if !value.is_primitive() {
                return None;
            }
            let found = list.iter().any(|c| same_primitive(&value, &from_literal(c)) == Some(true));
            Some(found != *negated)
        }
        _ => match eval(expr, row) {
            Val::Bool(b) => Some(b),
            _ => None,
        },
    }
}

/// Equality of two primitives of the same type; `None` otherwise.
fn same_primitive(a: &Val<'_>, b: &Val<'_>) -> Option<bool> {
    match (a, b) {
        (Val::Null, Val::Null) => Some(true),
        (Val::Bool(x), Val::Bool(y)) => Some(x == y),
        (Val::Num(x), Val::Num(y)) => Some(x == y),
        (Val::Str(x), Val::Str(y)) => Some(x == y),
        _ => None,
    }
}

fn compare(op: BinaryOp, a: &Val<'_>, b: &Val<'_>) -> Option<bool> {
    let ordering = match (a, b) {
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(y)?,
        (Val::Str(x), Val::Str(y)) => x.as_ref().cmp(y.as_ref()),
        _ => {
            let equal = same_primitive(a, b)?;
            return match op {
                BinaryOp::Eq => Some(equal),
                BinaryOp::Ne => Some(!equal),
                _ => None,
            };
        }
    };
    Some(match op {
        BinaryOp::Eq => ordering == Ordering::Equal,
        BinaryOp::Ne => ordering != Ordering::Equal,
        BinaryOp::Lt => ordering == Ordering::Less,
        BinaryOp::Le => ordering != Ordering::Greater,
        BinaryOp::Gt => ordering == Ordering::Greater,
        BinaryOp::Ge => ordering != Ordering::Less,
        _ => return None,
    })
}

fn finite(n: f64) -> Val<'static> {
    if n.is_finite() {
        Val::Num(n)
    } else {
        Val::Undefined
    }
}

fn arithmetic<'a>(op: BinaryOp, a: Val<'a>, b: Val<'a>) -> Val<'a> {
    let (Val::Num(x), Val::Num(y)) = (a, b) else { return Val::Undefined };
    match op {
        BinaryOp::Add => finite(x + y),
        BinaryOp::Sub => finite(x - y),
        BinaryOp::Mul => finite(x * y),
        BinaryOp::Div if y != 0.0 => finite(x / y),
        BinaryOp::Mod if y != 0.0 => finite(x % y),
        _ => Val::Undefined,
    }
}

fn call<'a>(func: Function, args: &'a [Expr], row: &'a Value) -> Val<'a> {
    use Function as F;
    let arg = |i: usize| args.get(i).map_or(Val::Undefined, |a| eval(a, row));
    let number = |i: usize| match arg(i) {
        Val::Num(n) => Some(n),
        _ => None,
    };
    match func {
        F::IsDefined => Val::Bool(!matches!(arg(0), Val::Undefined)),
        F::IsNull => Val::Bool(matches!(arg(0), Val::Null)),
        F::IsBool => Val::Bool(matches!(arg(0), Val::Bool(_))),
        F::IsNumber => Val::Bool(matches!(arg(0), Val::Num(_))),
        F::IsString => Val::Bool(matches!(arg(0), Val::Str(_))),
        F::IsObject => Val::Bool(matches!(arg(0), Val::Object(_))),
        F::IsArray => Val::Bool(matches!(arg(0), Val::Array(_))),
        F::IsPrimitive => Val::Bool(arg(0).is_primitive()),
        F::StartsWith | F::EndsWith | F::Contains | F::IndexOf => {
            let (Val::Str(s), Val::Str(p)) = (arg(0), arg(1)) else { return Val::Undefined };
            match func {
                F::StartsWith => Val::Bool(s.starts_with(p.as_ref())),
                F::EndsWith => Val::Bool(s.ends_with(p.as_ref())),
                F::Contains => Val::Bool(s.contains(p.as_ref())),
                _ => Val::Num(s.find(p.as_ref()).map_or(-1.0, |at| s[..at].chars().count() as f64)),
            }
        }
        F::Lower | F::Upper | F::Length => {
            let Val::Str(s) = arg(0) else { return Val::Undefined };
            match func {
                F::Lower => Val::Str(Cow::Owned(s.to_lowercase())),
                F::Upper => Val::Str(Cow::Owned(s.to_uppercase())),
                _ => Val::Num(s.chars().count() as f64),
            }
        }
        F::Concat => {
            let mut out = String::new();
            for a in args {
                let Val::Str(s) = eval(a, row) else { return Val::Undefined };
                out.push_str(&s);
            }
            Val::Str(Cow::Owned(out))
        }
        F::Substring => {
            let (Val::Str(s), Some(start), Some(len)) = (arg(0), number(1), number(2)) else {
                return Val::Undefined;
            };
            // Saturating float → integer casts: negative counts are 0.
            let (start, len) = (start.max(0.0) as usize, len.max(0.0) as usize);
            Val::Str(Cow::Owned(s.chars().skip(start).take(len).collect()))
        }
        F::AsNumber => match arg(0) {
            Val::Num(n) => Val::Num(n),
            Val::Str(s) => s.trim().parse::<f64>().map_or(Val::Undefined, finite),
            _ => Val::Undefined,
        },
        F::Power => match (number(0), number(1)) {
            (Some(x), Some(y)) => finite(x.powf(y)),
            _ => Val::Undefined,
        },
        F::Abs | F::Exp | F::Square | F::Ceiling | F::Floor | F::Sign | F::Sqrt => {
            let Some(x) = number(0) else { return Val::Undefined };
            finite(match func {
                F::Abs => x.abs(),
                F::Exp => x.exp(),
                F::Square => x * x,
                F::Ceiling => x.ceil(),
                F::Floor => x.floor(),
                F::Sign if x == 0.0 => 0.0,
                F::Sign => x.signum(),
                _ => x.sqrt(),
            })
        }
    }
}

/// A number as JSON: integral values within ±2^53 as integers, others as
/// floats.
pub(crate) fn number_to_json(n: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() < EXACT {
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

fn literal_to_json(literal: &Literal) -> Value {
    match literal {
        Literal::Undefined | Literal::Null => Value::Null,
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Number(n) => number_to_json(*n),
        Literal::String(s) => Value::String(s.clone()),
        Literal::Array(items) => Value::Array(items.iter().map(literal_to_json).collect()),
    }
}

/// The JSON form of a value; `None` for `undefined`.
pub(crate) fn to_json(value: Val<'_>) -> Option<Value> {
    Some(match value {
        Val::Undefined => return None,
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(b),
        Val::Num(n) => number_to_json(n),
        Val::Str(s) => Value::String(s.into_owned()),
        Val::Array(Arr::Json(items)) => Value::Array(items.to_vec()),
        Val::Array(Arr::Lit(items)) => Value::Array(items.iter().map(literal_to_json).collect()),
        Val::Object(map) => Value::Object(map.clone()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::parser::parse_condition;

    fn ev(condition: &str, row: &Value) -> Option<Value> {
        evaluate(&parse_condition(condition).unwrap(), row)
    }

    #[test]
    fn three_valued_logic() {
        let row = json!({"t": true, "f": false, "s": "x"});
        let cases = [
            ("t AND f", Some(json!(false))),
            ("t AND missing", None),
            ("f AND missing", Some(json!(false))),
            ("missing AND f", Some(json!(false))),
            ("t OR missing", Some(json!(true))),
            ("missing OR t", Some(json!(true))),
            ("f OR missing", None),
            ("NOT missing", None),
            ("NOT t", Some(json!(false))),
            ("NOT s", None),
            ("s AND t", None),
            ("s OR f", None),
        ];
        for (condition, expected) in cases {
            assert_eq!(ev(condition, &row), expected, "{condition}");
        }
    }

    #[test]
    fn comparisons_need_matching_primitive_types() {
        let row = json!({"n": 5, "s": "5", "z": null, "o": {"a": 1}, "a": [1], "b": true});
        let cases = [
            ("n = 5", Some(true)),
            ("n = 5.0", Some(true)),
            ("n = s", None),
            ("n != s", None),
            ("n != 4", Some(true)),
            ("z = null", Some(true)),
            ("z != null", Some(false)),
            ("n = null", None),
            ("n != null", None),
            ("z < null", None),
            ("b = true", Some(true)),
            ("b > false", None),
            ("o = o", None),
            ("a = a", None),
            ("s < '6'", Some(true)),
            ("s >= 'a'", Some(false)),
            ("missing = missing", None),
            ("missing != 1", None),
            ("n = undefined", None),
        ];
        for (condition, expected) in cases {
            assert_eq!(ev(condition, &row), expected.map(Value::Bool), "{condition}");
        }
    }

    #[test]
    fn arithmetic_and_functions() {
        let row = json!({"n": 7, "s": "Hello", "e": "é!"});
        let cases = [
            ("n + 1", json!(8)),
            ("n - 10", json!(-3)),
            ("n * 2", json!(14)),
            ("n / 2", json!(3.5)),
            ("n % 4", json!(3)),
            ("-n", json!(-7)),
            ("2 + 3 * 4", json!(14)),
            ("(2 + 3) * 4", json!(20)),
            ("LOWER(s)", json!("hello")),
            ("upper(s)", json!("HELLO")),
            ("LENGTH(e)", json!(2)),
            ("CONCAT(s, ', ', e)", json!("Hello, é!")),
            ("SUBSTRING(s, 1, 3)", json!("ell")),
            ("SUBSTRING(s, -2, 2)", json!("He")),
            ("INDEX_OF(s, 'l')", json!(2)),
            ("INDEX_OF(e, '!')", json!(1)),
            ("INDEX_OF(s, 'z')", json!(-1)),
            ("AS_NUMBER('2.5')", json!(2.5)),
            ("ABS(-3)", json!(3)),
            ("POWER(2, 10)", json!(1024)),
            ("SQUARE(3)", json!(9)),
            ("CEILING(1.2)", json!(2)),
            ("FLOOR(-1.2)", json!(-2)),
            ("SIGN(-4)", json!(-1)),
            ("SIGN(0)", json!(0)),
            ("SQRT(16)", json!(4)),
            ("EXP(0)", json!(1)),
            ("STARTS_WITH(s, 'He')", json!(true)),
            ("ENDSWITH(s, 'lo')", json!(true)),
            ("CONTAINS(s, 'ell')", json!(true)),
            ("CONTAINS(s, 'ELL')", json!(false)),
        ];
        for (expr, expected) in cases {
            assert_eq!(ev(expr, &row), Some(expected), "{expr}");
        }
        let undefined = [
            "n / 0",
            "n % 0",
            "s + 1",
            "-s",
            "LOWER(n)",
            "LENGTH(missing)",
            "CONCAT(s, n)",
            "AS_NUMBER('x')",
            "SQRT(-1)",
            "POWER(10, 400)",
            "STARTSWITH(n, '7')",
            "missing + 1",
        ];
        for expr in undefined {
            assert_eq!(ev(expr, &row), None, "{expr}");
        }
    }

    #[test]
    fn type_functions_never_answer_undefined() {
        let row = json!({"z": null, "o": {}, "a": [], "b": false, "n": 0, "s": ""});
        let table = [
            ("IS_DEFINED", ["z", "o", "a", "b", "n", "s"].as_slice()),
            ("IS_NULL", &["z"]),
            ("IS_OBJECT", &["o"]),
            ("IS_ARRAY", &["a"]),
            ("IS_BOOL", &["b"]),
            ("IS_NUMBER", &["n"]),
            ("IS_STRING", &["s"]),
            ("IS_PRIMITIVE", &["z", "b", "n", "s"]),
        ];
        for (func, trues) in table {
            for path in ["z", "o", "a", "b", "n", "s", "missing"] {
                let expected = trues.contains(&path);
                assert_eq!(ev(&format!("{func}({path})"), &row), Some(json!(expected)), "{func}({path})");
            }
        }
    }

    #[test]
    fn literals_and_in() {
        let row = json!({"s": "b", "n": 2, "o": {}});
        assert_eq!(ev("[1, 'a', [true], null]", &row), Some(json!([1, "a", [true], null])));
        assert_eq!(ev("-0.5", &row), Some(json!(-0.5)));
        assert_eq!(ev("0x10", &row), Some(json!(16)));
        assert_eq!(ev("undefined", &row), None);
        assert_eq!(ev("s IN ['a', 'b']", &row), Some(json!(true)));
        assert_eq!(ev("s IN ['a', 2]", &row), Some(json!(false)));
        assert_eq!(ev("s NIN ['a', 2]", &row), Some(json!(true)));
        assert_eq!(ev("s NOT IN ['b']", &row), Some(json!(false)));
        assert_eq!(ev("n IN [1, 2.0]", &row), Some(json!(true)));
        assert_eq!(ev("n IN []", &row), Some(json!(false)));
        assert_eq!(ev("missing IN [1]", &row), None);
        assert_eq!(ev("missing NIN [1]", &row), None);
        assert_eq!(ev("o IN [1]", &row), None);
        assert_eq!(ev("NOT s IN ['b']", &row), Some(json!(false)));
    }

    #[test]
    fn paths_walk_objects_only() {
        let row = json!({"a": {"b": [1, 2], "c": "x"}});
        assert_eq!(ev("a.b", &row), Some(json!([1, 2])));
        assert_eq!(ev("a.c.d", &row), None);
        assert_eq!(ev("a.b.0", &row), None);
        assert_eq!(ev("a", &row), Some(json!({"b": [1, 2], "c": "x"})));
    }

    #[test]
    fn lookups_in_large_and_small_objects() {
        let mut big = Map::new();
        for i in 0..20 {
            big.insert(format!("k{i}"), json!(i));
        }
        let row = json!({"big": big, "small": {"k3": 3}});
        assert_eq!(ev("big.k17", &row), Some(json!(17)));
        assert_eq!(ev("big.k20", &row), None);
        assert_eq!(ev("small.k3", &row), Some(json!(3)));
    }

    #[test]
    fn numbers_render_as_integers_when_whole() {
        assert_eq!(number_to_json(3.0), json!(3));
        assert_eq!(number_to_json(-0.0), json!(0));
        assert_eq!(number_to_json(2.5), json!(2.5));
        assert_eq!(number_to_json(1e20), json!(1e20));
    }
}
