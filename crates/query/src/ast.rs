//! The syntax tree the parser builds. Nothing here evaluates anything.
//!
//! Paths are resolved by the parser: a leading `devices.` (and, for the
//! `devices.modules` / `devices.jobs` collections, `modules.` / `jobs.`) is
//! dropped, and system property names are stored in their canonical casing,
//! so evaluation is a chain of exact key lookups.

/// `SELECT [TOP n] <select> FROM <from> [WHERE <filter>] [GROUP BY <group_by>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub top: Option<u64>,
    pub select: Select,
    pub from: Collection,
    pub filter: Option<Expr>,
    pub group_by: Vec<Path>,
}

impl Query {
    /// True when the query produces aggregate rows (`COUNT()` etc. or
    /// `GROUP BY`) rather than one row per matching twin.
    pub fn is_aggregate(&self) -> bool {
        !self.group_by.is_empty()
            || matches!(&self.select, Select::Items(items) if items.iter().any(|i| matches!(i.expr, SelectExpr::Aggregate(_))))
    }
}

impl Query {
    /// Every path the query reads: projection, WHERE and GROUP BY.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        if let Select::Items(items) = &self.select {
            for item in items {
                match &item.expr {
                    SelectExpr::Expr(e)
                    | SelectExpr::Aggregate(
                        Aggregate::Sum(e) | Aggregate::Avg(e) | Aggregate::Min(e) | Aggregate::Max(e),
                    ) => e.collect_paths(&mut out),
                    SelectExpr::Aggregate(Aggregate::Count) => {}
                }
            }
        }
        if let Some(filter) = &self.filter {
            filter.collect_paths(&mut out);
        }
        out.extend(self.group_by.iter());
        out
    }
}

/// The projection.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// `SELECT *`: whole documents.
    All,
    /// `SELECT a, b AS c, COUNT() AS n`.
    Items(Vec<SelectItem>),
}

/// One element of the projection.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectItem {
    pub expr: SelectExpr,
    /// The `AS` name, if given.
    pub alias: Option<String>,
    /// The key this item gets in each result row: the alias, else the last
    /// segment of a path (canonical casing), else `$1`, `$2`, … numbering
    /// the unnamed non-path items in order.
    pub name: String,
}

/// A projected value: a scalar expression or an aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectExpr {
    Expr(Expr),
    Aggregate(Aggregate),
}

/// An aggregate function of the projection.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    /// `COUNT()`: the number of rows.
    Count,
    /// `SUM(x)`: the sum of the numeric values of `x`.
    Sum(Expr),
    /// `AVG(x)`: the mean of the numeric values of `x`.
    Avg(Expr),
    /// `MIN(x)`: the least numeric value of `x`.
    Min(Expr),
    /// `MAX(x)`: the greatest numeric value of `x`.
    Max(Expr),
}

/// The `FROM` collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// `devices`: device twins.
    Devices,
    /// `devices.modules`: module twins.
    DevicesModules,
    /// `devices.jobs`: (device, job) rows.
    DevicesJobs,
}

impl Collection {
    /// The collection as written in a query.
    pub fn as_str(self) -> &'static str {
        match self {
            Collection::Devices => "devices",
            Collection::DevicesModules => "devices.modules",
            Collection::DevicesJobs => "devices.jobs",
        }
    }
}

/// An attribute reference: object keys from the row's root, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    pub segments: Vec<String>,
}

impl Path {
    /// The last segment (every path has at least one).
    pub fn last(&self) -> &str {
        self.segments.last().map_or("", String::as_str)
    }
}

impl std::fmt::Display for Path {
    /// The path as it can be written back into a query (segments that are
    /// not plain identifiers are quoted as `[[name]]`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            let plain = seg.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
                && seg.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$');
            if plain {
                f.write_str(seg)?;
            } else {
                write!(f, "[[{seg}]]")?;
            }
        }
        Ok(())
    }
}

/// A constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `undefined`: the value of a missing property.
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// `[c1, c2, …]` (elements are constants too).
    Array(Vec<Literal>),
}

/// A scalar expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Literal),
    Path(Path),
    Unary {
        op: UnaryOp,
        expr: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    /// `expr IN [list]`, or with `negated` `expr NIN [list]` / `expr NOT IN [list]`.
    In {
        expr: Box<Expr>,
        list: Vec<Literal>,
        negated: bool,
    },
    Call {
        func: Function,
        args: Vec<Expr>,
    },
}

impl Expr {
    /// Every path the expression reads, in order of appearance (with
    /// repeats). A configuration engine can tell from them which twin
    /// changes can alter a condition's outcome (e.g. only `tags.*`).
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        self.collect_paths(&mut out);
        out
    }

    fn collect_paths<'a>(&'a self, out: &mut Vec<&'a Path>) {
        match self {
            Expr::Literal(_) => {}
            Expr::Path(path) => out.push(path),
            Expr::Unary { expr, .. } | Expr::In { expr, .. } => expr.collect_paths(out),
            Expr::Binary { left, right, .. } => {
                left.collect_paths(out);
                right.collect_paths(out);
            }
            Expr::Call { args, .. } => args.iter().for_each(|a| a.collect_paths(out)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `NOT x`
    Not,
    /// `-x`
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    /// `!=` or `<>`
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinaryOp {
    /// The operator as written (`<>` is shown as `!=`).
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryOp::Or => "OR",
            BinaryOp::And => "AND",
            BinaryOp::Eq => "=",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
        }
    }
}

/// A scalar function, resolved from its (case-insensitive) name at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    IsDefined,
    IsNull,
    IsBool,
    IsNumber,
    IsString,
    IsObject,
    IsArray,
    IsPrimitive,
    StartsWith,
    EndsWith,
    Contains,
    Lower,
    Upper,
    Length,
    Concat,
    Substring,
    IndexOf,
    AsNumber,
    Abs,
    Exp,
    Power,
    Square,
    Ceiling,
    Floor,
    Sign,
    Sqrt,
}

impl Function {
    const NAMES: [(&'static str, Function); 28] = [
        ("IS_DEFINED", Function::IsDefined),
        ("IS_NULL", Function::IsNull),
        ("IS_BOOL", Function::IsBool),
        ("IS_NUMBER", Function::IsNumber),
        ("IS_STRING", Function::IsString),
        ("IS_OBJECT", Function::IsObject),
        ("IS_ARRAY", Function::IsArray),
        ("IS_PRIMITIVE", Function::IsPrimitive),
        ("STARTSWITH", Function::StartsWith),
        ("STARTS_WITH", Function::StartsWith),
        ("ENDSWITH", Function::EndsWith),
        ("ENDS_WITH", Function::EndsWith),
        ("CONTAINS", Function::Contains),
        ("LOWER", Function::Lower),
        ("UPPER", Function::Upper),
        ("LENGTH", Function::Length),
        ("CONCAT", Function::Concat),
        ("SUBSTRING", Function::Substring),
        ("INDEX_OF", Function::IndexOf),
        ("AS_NUMBER", Function::AsNumber),
        ("ABS", Function::Abs),
        ("EXP", Function::Exp),
        ("POWER", Function::Power),
        ("SQUARE", Function::Square),
        ("CEILING", Function::Ceiling),
        ("FLOOR", Function::Floor),
        ("SIGN", Function::Sign),
        ("SQRT", Function::Sqrt),
    ];

    /// The function called `name` (any case; `STARTS_WITH`/`ENDS_WITH` are
    /// accepted as spellings of `STARTSWITH`/`ENDSWITH`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, f)| f)
    }

    /// The canonical (upper-case) name.
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|&&(_, f)| f == self).map_or("", |(n, _)| n)
    }

    /// The least and greatest number of arguments (`None`: no upper bound).
    pub fn arity(self) -> (usize, Option<usize>) {
        use Function as F;
        match self {
            F::Concat => (2, None),
            F::Substring => (3, Some(3)),
            F::StartsWith | F::EndsWith | F::Contains | F::IndexOf | F::Power => (2, Some(2)),
            _ => (1, Some(1)),
        }
    }
}
