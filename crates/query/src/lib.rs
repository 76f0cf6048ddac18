//! The IoT Hub query language over twin documents. Pure: no IO.
//!
//! Three layers, each usable alone:
//! - [`lexer`]: text → tokens with byte positions;
//! - [`parser`]: tokens → [`Query`] / [`Expr`] (the [`ast`]); paths are
//!   resolved here so evaluation is plain key lookups;
//! - [`eval`] / [`exec`]: a condition over one row ([`matches()`]), a whole
//!   query over many rows ([`execute`]).
//!
//! A row is the JSON document of a twin exactly as
//! `ferrohub_core::twin::TwinState::to_json` renders it (`deviceId`,
//! `status`, `tags`, `properties.desired`/`reported` with their `$metadata`
//! and `$version`, `configurations.{id}.status`, …).
//!
//! ```
//! use ferrohub_query::{execute, parse_query, parse_condition, matches};
//! use serde_json::json;
//!
//! let twins = [json!({"deviceId": "d1", "tags": {"devicetype": "chiller"}})];
//! let q = parse_query("SELECT COUNT() AS n FROM devices WHERE tags.devicetype = 'chiller'").unwrap();
//! assert_eq!(execute(&q, twins.iter()).unwrap().items, [json!({"n": 1})]);
//! assert!(matches(&parse_condition("tags.devicetype = 'chiller'").unwrap(), &twins[0]));
//! ```
//!
//! # Semantics, where Azure's documentation leaves a choice
//!
//! Azure's query language descends from DocumentDB (Cosmos DB) SQL; where
//! the IoT Hub documentation is silent ferrohub follows DocumentDB's rules.
//!
//! - **undefined**: a missing property, or a path through a non-object
//!   (arrays are not indexed by paths), is `undefined`. A row passes a
//!   condition only if it evaluates to boolean `true`.
//! - **Comparisons** are defined only between two values of the same
//!   primitive type: `=` and `!=`/`<>` for null, booleans, numbers and
//!   strings; `< <= > >=` for numbers and for strings. Every other
//!   combination — a type mismatch, undefined, an object or an array on
//!   either side — is `undefined`, **for `!=` too** (`5 != 'a'` is not true),
//!   so `NOT (a = b)` and `a != b` always agree. `null = null` is true.
//!   Write `IS_DEFINED(x)` / `NOT IS_NULL(x)` to test presence.
//! - **Strings** compare case-sensitively, ordered by code point; numbers
//!   compare by value (`1 = 1.0`).
//! - **AND / OR / NOT** are three-valued: `false AND x` is false, `true OR
//!   x` is true, otherwise an undefined (or non-boolean) operand makes the
//!   result undefined; **`NOT undefined` is undefined**.
//! - **IN / NIN** are membership tests over an array of constants: `x IN
//!   [..]` is true when `x` equals an element (same type, as `=`), false
//!   when `x` is a primitive equal to none, undefined when `x` is
//!   undefined, an object or an array. `x NIN [..]` (also `x NOT IN [..]`)
//!   is the negation, so it is undefined where `IN` is.
//! - **Arithmetic** (`+ - * / %`, unary `-`) is on numbers only; anything
//!   else, division by zero and non-finite results are undefined. `+` does
//!   not concatenate (use `CONCAT`).
//! - **Functions** (names case-insensitive): the type tests `IS_DEFINED`
//!   (true for any value, `null` included), `IS_NULL`, `IS_BOOL`,
//!   `IS_NUMBER`, `IS_STRING`, `IS_OBJECT`, `IS_ARRAY`, `IS_PRIMITIVE`
//!   always answer a boolean; `STARTSWITH`/`STARTS_WITH`,
//!   `ENDSWITH`/`ENDS_WITH`, `CONTAINS`, `INDEX_OF` (character index or -1),
//!   `LOWER`, `UPPER`, `LENGTH` (characters), `CONCAT` (≥ 2 strings),
//!   `SUBSTRING(s, start, length)` (characters, 0-based), `AS_NUMBER`, and
//!   `ABS EXP POWER SQUARE CEILING FLOOR SIGN SQRT` answer undefined when an
//!   argument has the wrong type. String functions are case-sensitive.
//!   Unknown functions and wrong argument counts are errors at parse time.
//! - **Case of names**: keywords and function names are case-insensitive.
//!   System property names (twin roots such as `deviceId`, `status`,
//!   `tags`, `properties`; `desired`/`reported` under `properties`;
//!   `x509Thumbprint.*`, `capabilities.iotEdge`, the `status` of a
//!   configuration, and `$metadata`, `$version`, `$lastUpdated…` at any
//!   depth) match case-insensitively and are shown in canonical casing.
//!   **Keys under `tags`, `properties.desired`/`reported` and configuration
//!   ids are case-sensitive** (they are stored case-sensitively and two keys
//!   may differ only in case).
//! - **Paths**: `devices.` in front of a path is dropped (and `devices.modules.`
//!   / `devices.jobs.` for those collections); `[[name]]` quotes a segment
//!   (needed for `-` and other characters, and for a keyword as the first
//!   segment; after a `.` keywords are ordinary names: `tags.group`).
//!   Because `[[` always opens a quoted segment, an array constant whose
//!   first element is an array needs a space: `[ [1], 2]`.
//! - **Projection names**: the alias, else the last path segment (canonical
//!   casing: `SELECT DeviceId` gives `deviceId`), else — for aggregates and
//!   computed values without `AS` — `$1`, `$2`, … numbering those items in
//!   order (DocumentDB's convention): `SELECT COUNT() FROM devices` gives
//!   `[{"$1": n}]`. Two items with the same name are an error. Undefined
//!   values are left out of a row (a row may be `{}`).
//! - **Aggregates**: `COUNT()` takes no argument. `SUM`, `AVG`, `MIN`, `MAX`
//!   take the numeric values of their argument and ignore other types;
//!   `SUM` of none is 0, `AVG`/`MIN`/`MAX` of none are undefined (left out).
//!   Without `GROUP BY` an aggregate query gives exactly one row (`{"n": 0}`
//!   when nothing matches) and may not mix aggregates with plain values.
//! - **GROUP BY** (only `FROM devices`): every plain projection item must be
//!   one of the grouped paths. One row per distinct combination of the
//!   grouped values, in order of first appearance; rows where a grouped path
//!   is **undefined form a group of their own**, whose row leaves that key
//!   out (`{"n": 2}`). Numbers group by value; objects and arrays by their
//!   JSON text.
//! - **TOP n** limits the result rows, after aggregation: `SELECT TOP 1
//!   COUNT() …` still counts every matching row, and with `GROUP BY` it gives
//!   at most n groups. `TOP 0` gives no rows.
//! - **Item type**: `SELECT *` → `Twin`; projections and aggregates → `Raw`.
//!   `FROM devices.jobs` parses (only as `SELECT *`) but [`execute`] answers
//!   it with a "not supported" error.
//! - **Errors** are [`QueryError`]s with a byte offset; the message names it
//!   (`Syntax error at position 27: expected an expression after 'WHERE',
//!   found end of input`). Queries over 8192 characters are refused, as are
//!   expressions nested more than 64 levels (parentheses, `NOT`, calls) or
//!   more than 1024 operators deep.
//! - **Conditions** ([`parse_condition`], configurations' `targetCondition`):
//!   a bare expression; `*` alone means every device.
//!
//! # Cost
//!
//! Evaluation borrows from the row: no row is cloned and path lookups do not
//! allocate (segments are resolved at parse time; objects of up to 32 keys
//! are scanned, larger ones hashed). `COUNT()` and the other aggregates keep
//! running totals; `GROUP BY` keeps one entry per group; only result rows
//! are built. A condition costs tens of nanoseconds per twin when the twins
//! are in cache, but a full scan of a million JSON twins is bound by memory
//! latency (each path step is a pointer chase): well under a second, not
//! 100 ms (`examples/count_bench.rs` measures it). Faster answers need the
//! caller to keep state — counts updated per twin change with [`matches()`],
//! or a compact index of the paths queries read ([`Query::paths`]).

pub mod ast;
pub mod error;
pub mod eval;
pub mod exec;
mod fuzz;
pub mod lexer;
pub mod parser;

pub use ast::{
    Aggregate, BinaryOp, Collection, Expr, Function, Literal, Path, Query, Select, SelectExpr, SelectItem,
    UnaryOp,
};
pub use error::QueryError;
pub use eval::{evaluate, matches};
pub use exec::{execute, ItemType, QueryResult};
pub use fuzz::fuzz_query;
pub use parser::{parse_condition, parse_query, MAX_QUERY_CHARS};
