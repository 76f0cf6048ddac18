//! Running a parsed [`Query`] over rows: WHERE → GROUP BY → SELECT → TOP.
//!
//! Rows are borrowed; only result rows are built. `COUNT()` and the other
//! aggregates keep running totals and never hold rows; `GROUP BY` keeps one
//! entry per group, keyed by values borrowed from the rows.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::ast::{Aggregate, Collection, Expr, Query, Select, SelectExpr, SelectItem};
use crate::error::QueryError;
use crate::eval::{eval, lookup, matches, number_to_json, to_json, Val};

/// The kind of rows a query returns, sent as `x-ms-item-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemType {
    /// Whole twins (`SELECT *`).
    Twin,
    /// Projections and aggregates.
    Raw,
}

impl ItemType {
    /// `"Twin"` or `"Raw"`, exactly as the .NET and Java SDKs parse them.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Twin => "Twin",
            ItemType::Raw => "Raw",
        }
    }
}

/// All result rows of a query (paging is the caller's business).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub items: Vec<Value>,
    pub item_type: ItemType,
}

impl Query {
    /// True when `row` passes the WHERE clause (always, without one).
    pub fn row_matches(&self, row: &Value) -> bool {
        self.filter.as_ref().is_none_or(|f| matches(f, row))
    }

    /// The item type of this query's results.
    pub fn item_type(&self) -> ItemType {
        match self.select {
            Select::All => ItemType::Twin,
            Select::Items(_) => ItemType::Raw,
        }
    }
}

/// Runs `query` over `rows` (the documents of `query.from`: device twins for
/// `FROM devices`, module twins for `FROM devices.modules`). `FROM
/// devices.jobs` is answered with a "not supported" error.
pub fn execute<'a>(query: &Query, rows: impl Iterator<Item = &'a Value>) -> Result<QueryResult, QueryError> {
    if query.from == Collection::DevicesJobs {
        return Err(QueryError::unsupported(
            "FROM devices.jobs (ferrohub does not keep device job rows yet)",
        ));
    }
    let limit = query.top.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let item_type = query.item_type();
    let mut matching = rows.filter(|row| query.row_matches(row));
    let items = match &query.select {
        Select::All => matching.take(limit).cloned().collect(),
        Select::Items(items) if !query.group_by.is_empty() => group(query, items, matching, limit),
        Select::Items(items) if query.is_aggregate() => {
            if limit == 0 {
                Vec::new()
            } else if let [SelectItem { expr: SelectExpr::Aggregate(Aggregate::Count), name, .. }] =
                items.as_slice()
            {
                let count = matching.count();
                vec![Value::Object(Map::from_iter([(name.clone(), Value::from(count))]))]
            } else {
                let mut totals = Totals::new(items);
                matching.by_ref().for_each(|row| totals.add(items, row));
                vec![Value::Object(totals.finish(items, |_| None))]
            }
        }
        Select::Items(items) => matching.take(limit).map(|row| Value::Object(project(items, row))).collect(),
    };
    Ok(QueryResult { items, item_type })
}

/// One result row of a projection; undefined values are left out.
fn project(items: &[SelectItem], row: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for item in items {
        let SelectExpr::Expr(expr) = &item.expr else { continue };
        let value = match expr {
            Expr::Path(path) => lookup(path, row).cloned(),
            expr => to_json(eval(expr, row)),
        };
        if let Some(value) = value {
            out.insert(item.name.clone(), value);
        }
    }
    out
}

/// Running values of a row's aggregates, one per projection item (`None`
/// for plain items).
struct Totals(Vec<Option<Total>>);

enum Total {
    Count(u64),
    Sum(f64),
    Avg { sum: f64, n: u64 },
    Min(Option<f64>),
    Max(Option<f64>),
}

impl Totals {
    fn new(items: &[SelectItem]) -> Self {
        Self(
            items
                .iter()
                .map(|item| match &item.expr {
                    SelectExpr::Expr(_) => None,
                    SelectExpr::Aggregate(Aggregate::Count) => Some(Total::Count(0)),
                    SelectExpr::Aggregate(Aggregate::Sum(_)) => Some(Total::Sum(0.0)),
                    SelectExpr::Aggregate(Aggregate::Avg(_)) => Some(Total::Avg { sum: 0.0, n: 0 }),
                    SelectExpr::Aggregate(Aggregate::Min(_)) => Some(Total::Min(None)),
                    SelectExpr::Aggregate(Aggregate::Max(_)) => Some(Total::Max(None)),
                })
                .collect(),
        )
    }

    fn add(&mut self, items: &[SelectItem], row: &Value) {
        for (total, item) in self.0.iter_mut().zip(items) {
            let (Some(total), SelectExpr::Aggregate(aggregate)) = (total, &item.expr) else { continue };
            let value = match aggregate {
                Aggregate::Count => None,
                Aggregate::Sum(e) | Aggregate::Avg(e) | Aggregate::Min(e) | Aggregate::Max(e) => {
                    match eval(e, row) {
                        Val::Num(n) => Some(n),
                        _ => continue,
                    }
                }
            };
            match (total, value) {
                (Total::Count(c), _) => *c += 1,
                (Total::Sum(s), Some(v)) => *s += v,
                (Total::Avg { sum, n }, Some(v)) => {
                    *sum += v;
                    *n += 1;
                }
                (Total::Min(m), Some(v)) => *m = Some(m.map_or(v, |m| m.min(v))),
                (Total::Max(m), Some(v)) => *m = Some(m.map_or(v, |m| m.max(v))),
                _ => {}
            }
        }
    }

    /// The result row: aggregates from the totals, plain items from `plain`
    /// (the group's value for a grouped path); undefined values left out.
    fn finish(self, items: &[SelectItem], plain: impl Fn(usize) -> Option<Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for (i, (total, item)) in self.0.into_iter().zip(items).enumerate() {
            let value = match total {
                None => plain(i),
                Some(Total::Count(c)) => Some(Value::from(c)),
                Some(Total::Sum(s)) => Some(number_to_json(s)),
                Some(Total::Avg { sum, n }) => (n > 0).then(|| number_to_json(sum / n as f64)),
                Some(Total::Min(m) | Total::Max(m)) => m.map(number_to_json),
            };
            if let Some(value) = value {
                out.insert(item.name.clone(), value);
            }
        }
        out
    }
}

/// A grouped path's value, hashable, borrowing from the row. Numbers are
/// grouped by value (`1` and `1.0` are one group).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyPart<'a> {
    Undefined,
    Null,
    Bool(bool),
    Number(u64),
    Str(&'a str),
    /// Objects and arrays, by their JSON text.
    Composite(String),
}

fn key_part(value: Option<&Value>) -> KeyPart<'_> {
    match value {
        None => KeyPart::Undefined,
        Some(Value::Null) => KeyPart::Null,
        Some(Value::Bool(b)) => KeyPart::Bool(*b),
        // `+ 0.0` turns -0 into 0.
        Some(Value::Number(n)) => KeyPart::Number((n.as_f64().unwrap_or(0.0) + 0.0).to_bits()),
        Some(Value::String(s)) => KeyPart::Str(s),
        Some(composite) => KeyPart::Composite(composite.to_string()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum GroupKey<'a> {
    One(KeyPart<'a>),
    Many(Vec<KeyPart<'a>>),
}

struct Group<'a> {
    /// The grouped paths' values, from the group's first row.
    values: Vec<Option<&'a Value>>,
    totals: Totals,
}

/// `GROUP BY`: one result row per distinct combination of the grouped
/// paths' values (undefined is a value of its own), in order of first
/// appearance.
fn group<'a>(
    query: &Query,
    items: &[SelectItem],
    rows: impl Iterator<Item = &'a Value>,
    limit: usize,
) -> Vec<Value> {
    let mut index: HashMap<GroupKey<'a>, usize> = HashMap::new();
    let mut groups: Vec<Group<'a>> = Vec::new();
    for row in rows {
        let key = match query.group_by.as_slice() {
            [path] => GroupKey::One(key_part(lookup(path, row))),
            paths => GroupKey::Many(paths.iter().map(|p| key_part(lookup(p, row))).collect()),
        };
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(Group {
                values: query.group_by.iter().map(|p| lookup(p, row)).collect(),
                totals: Totals::new(items),
            });
            groups.len() - 1
        });
        if let Some(group) = groups.get_mut(at) {
            group.totals.add(items, row);
        }
    }
    // Which grouped path each plain projection item shows.
    let slots: Vec<Option<usize>> = items
        .iter()
        .map(|item| match &item.expr {
            SelectExpr::Expr(Expr::Path(path)) => query.group_by.iter().position(|p| p == path),
            _ => None,
        })
        .collect();
    groups
        .into_iter()
        .take(limit)
        .map(|group| {
            let values = group.values;
            let plain = |i: usize| slots[i].and_then(|slot| values[slot]).cloned();
            Value::Object(group.totals.finish(items, plain))
        })
        .collect()
}
