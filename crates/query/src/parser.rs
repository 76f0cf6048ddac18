//! Recursive-descent parser: tokens → [`Query`] / [`Expr`].
//!
//! Precedence, loosest first: `OR` < `AND` < `NOT` < comparison (`= != <> <
//! <= > >= IN NIN NOT IN`) < additive (`+ -`) < multiplicative (`* / %`) <
//! unary minus. Binary operators associate to the left.
//!
//! After parsing, paths are resolved (collection prefix dropped, system
//! names in canonical casing) and the query is checked against the rules
//! that need the whole statement (GROUP BY vs projection, duplicate output
//! names, collection restrictions). Every error is a [`QueryError`] naming
//! the byte position and, for syntax errors, what was expected.

use crate::ast::{
    Aggregate, BinaryOp, Collection, Expr, Function, Literal, Path, Query, Select, SelectExpr, SelectItem,
    UnaryOp,
};
use crate::error::QueryError;
use crate::lexer::{tokenize, Keyword, Token, TokenKind};

/// The longest query (or condition) accepted, in characters (Azure's limit).
pub const MAX_QUERY_CHARS: usize = 8192;

/// How deeply parentheses, `NOT`, unary minus, function calls and array
/// constants may nest inside each other.
const MAX_NESTING: usize = 64;

/// How deep an expression tree may be (long `AND`/`OR`/`+` chains count),
/// so that evaluating it stays far from the end of a thread's stack.
const MAX_DEPTH: usize = 1024;

/// Parses a whole statement: `SELECT … FROM … [WHERE …] [GROUP BY …]`.
pub fn parse_query(text: &str) -> Result<Query, QueryError> {
    let mut parser = Parser::new(text)?;
    let query = parser.query()?;
    Ok(query)
}

/// Parses a bare condition, as in a configuration's `targetCondition`
/// (`tags.devicetype = 'chiller'`). `*` alone means every row and parses as
/// the constant `true`. A `devices.` prefix on paths is dropped.
pub fn parse_condition(text: &str) -> Result<Expr, QueryError> {
    let mut parser = Parser::new(text)?;
    if text.trim() == "*" {
        return Ok(Expr::Literal(Literal::Bool(true)));
    }
    if let Some(TokenKind::Keyword(Keyword::Select | Keyword::Where)) = parser.peek_kind() {
        return Err(parser.expected("a condition (written without SELECT … WHERE, e.g. tags.x = 'y')"));
    }
    let mut expr = parser.expr()?;
    if parser.peek().is_some() {
        return Err(parser.expected("an operator or end of input"));
    }
    resolve_expr(&mut expr, None);
    check_depth(&expr)?;
    Ok(expr)
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<Token>,
    pos: usize,
    nesting: usize,
}

/// A parsed projection element and the source span it came from.
struct ItemSpan {
    start: usize,
    end: usize,
}

impl<'t> Parser<'t> {
    fn new(text: &'t str) -> Result<Self, QueryError> {
        if let Some((offset, _)) = text.char_indices().nth(MAX_QUERY_CHARS) {
            return Err(QueryError::semantic(
                offset,
                format_args!(
                    "the query is longer than {MAX_QUERY_CHARS} characters ({} characters)",
                    text.chars().count()
                ),
            ));
        }
        Ok(Self { text, tokens: tokenize(text)?, pos: 0, nesting: 0 })
    }

    // ----- token helpers -----

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_kind(&self) -> Option<&TokenKind> {
        self.peek().map(|t| &t.kind)
    }

    fn peek_kind_at(&self, ahead: usize) -> Option<&TokenKind> {
        self.tokens.get(self.pos + ahead).map(|t| &t.kind)
    }

    /// Byte position of the next token (the text's length at the end).
    fn here(&self) -> usize {
        self.peek().map_or(self.text.len(), |t| t.start)
    }

    /// End of the previous token.
    fn prev_end(&self) -> usize {
        self.pos.checked_sub(1).and_then(|i| self.tokens.get(i)).map_or(0, |t| t.end)
    }

    fn advance(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        if token.is_some() {
            self.pos += 1;
        }
        token
    }

    fn at(&self, kind: &TokenKind) -> bool {
        self.peek_kind() == Some(kind)
    }

    fn eat(&mut self, kind: &TokenKind) -> bool {
        if self.at(kind) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn at_kw(&self, kw: Keyword) -> bool {
        self.at(&TokenKind::Keyword(kw))
    }

    fn eat_kw(&mut self, kw: Keyword) -> bool {
        self.eat(&TokenKind::Keyword(kw))
    }

    fn source(&self, token: &Token) -> &'t str {
        &self.text[token.start..token.end]
    }

    /// `Syntax error at position P: expected WHAT [after 'PREV'], found X`.
    fn expected(&self, what: &str) -> QueryError {
        let found = match self.peek() {
            Some(token) => format!("'{}'", shorten(self.source(token))),
            None => "end of input".to_owned(),
        };
        let previous = self.pos.checked_sub(1).and_then(|i| self.tokens.get(i));
        let detail = match previous {
            Some(prev) => format!("expected {what} after '{}', found {found}", shorten(self.source(prev))),
            None => format!("expected {what}, found {found}"),
        };
        QueryError::syntax(self.here(), detail)
    }

    fn expect(&mut self, kind: &TokenKind, what: &str) -> Result<(), QueryError> {
        if self.eat(kind) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn enter(&mut self) -> Result<(), QueryError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(QueryError::semantic(
                self.here(),
                format_args!("the expression nests more than {MAX_NESTING} levels deep"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    // ----- statement -----

    fn query(&mut self) -> Result<Query, QueryError> {
        if !self.eat_kw(Keyword::Select) {
            return Err(self.expected("SELECT"));
        }
        let top = if self.eat_kw(Keyword::Top) { Some(self.top_count()?) } else { None };
        let select_start = self.here();
        let (select, spans) = self.select_list()?;
        let from = self.collection()?;
        let filter = if self.eat_kw(Keyword::Where) { Some(self.expr()?) } else { None };
        let mut group_by = Vec::new();
        let mut group_start = None;
        if self.at_kw(Keyword::Group) {
            group_start = Some(self.here());
            self.advance();
            if !self.eat_kw(Keyword::By) {
                return Err(self.expected("BY"));
            }
            loop {
                group_by.push(self.path_only()?);
                if !self.eat(&TokenKind::Comma) {
                    break;
                }
            }
        }
        if self.peek().is_some() {
            let what = match (&filter, group_start) {
                (_, Some(_)) => "',' or end of input",
                (Some(_), None) => "an operator, GROUP BY or end of input",
                (None, None) => "WHERE, GROUP BY or end of input",
            };
            return Err(self.expected(what));
        }

        let mut query = Query { top, select, from, filter, group_by };
        resolve_query(&mut query);
        self.validate(&mut query, select_start, &spans, group_start)?;
        Ok(query)
    }

    fn top_count(&mut self) -> Result<u64, QueryError> {
        let at = self.here();
        match self.peek_kind() {
            Some(&TokenKind::Number(n)) => {
                if n.fract() != 0.0 || n < 0.0 || n > u64::MAX as f64 {
                    let text = self.peek().map_or("", |t| self.source(t));
                    return Err(QueryError::semantic(
                        at,
                        format_args!("TOP needs a whole number, found '{text}'"),
                    ));
                }
                self.advance();
                Ok(n as u64)
            }
            _ => Err(self.expected("a number")),
        }
    }

    fn select_list(&mut self) -> Result<(Select, Vec<ItemSpan>), QueryError> {
        if self.eat(&TokenKind::Star) {
            if !self.at_kw(Keyword::From) {
                return Err(self.expected("FROM"));
            }
            return Ok((Select::All, Vec::new()));
        }
        if !self.peek_kind().is_some_and(can_start_expr) {
            return Err(self.expected("'*' or a list of values to select"));
        }
        let mut items = Vec::new();
        let mut spans = Vec::new();
        loop {
            let start = self.here();
            let expr = self.select_expr()?;
            let end = self.prev_end();
            let alias = if self.eat_kw(Keyword::As) { Some(self.alias()?) } else { None };
            let has_alias = alias.is_some();
            items.push(SelectItem { expr, alias, name: String::new() });
            spans.push(ItemSpan { start, end });
            if self.eat(&TokenKind::Comma) {
                continue;
            }
            if self.at_kw(Keyword::From) {
                return Ok((Select::Items(items), spans));
            }
            return Err(self.expected(if has_alias { "',' or FROM" } else { "AS, ',' or FROM" }));
        }
    }

    fn select_expr(&mut self) -> Result<SelectExpr, QueryError> {
        if let (Some(TokenKind::Ident(name)), Some(TokenKind::LParen)) =
            (self.peek_kind(), self.peek_kind_at(1))
        {
            let upper = name.to_ascii_uppercase();
            if AGGREGATES.contains(&upper.as_str()) {
                self.advance();
                self.advance();
                let aggregate = if upper == "COUNT" {
                    if !self.at(&TokenKind::RParen) {
                        return Err(QueryError::semantic(self.here(), "COUNT() takes no argument"));
                    }
                    Aggregate::Count
                } else {
                    let arg = self.expr()?;
                    match upper.as_str() {
                        "SUM" => Aggregate::Sum(arg),
                        "AVG" => Aggregate::Avg(arg),
                        "MIN" => Aggregate::Min(arg),
                        _ => Aggregate::Max(arg),
                    }
                };
                self.expect(&TokenKind::RParen, "')'")?;
                return Ok(SelectExpr::Aggregate(aggregate));
            }
        }
        Ok(SelectExpr::Expr(self.expr()?))
    }

    fn alias(&mut self) -> Result<String, QueryError> {
        match self.peek_kind() {
            Some(TokenKind::Ident(name)) | Some(TokenKind::QuotedSegment(name)) => {
                let name = name.clone();
                self.advance();
                Ok(name)
            }
            _ => Err(self.expected("a name")),
        }
    }

    fn collection(&mut self) -> Result<Collection, QueryError> {
        const WHAT: &str = "'devices', 'devices.modules' or 'devices.jobs'";
        if !self.eat_kw(Keyword::From) {
            return Err(self.expected("FROM"));
        }
        match self.peek_kind() {
            Some(TokenKind::Ident(name)) if name.eq_ignore_ascii_case("devices") => {}
            _ => return Err(self.expected(WHAT)),
        }
        self.advance();
        if !self.eat(&TokenKind::Dot) {
            return Ok(Collection::Devices);
        }
        let collection = match self.peek_kind() {
            Some(TokenKind::Ident(name)) if name.eq_ignore_ascii_case("modules") => {
                Collection::DevicesModules
            }
            Some(TokenKind::Ident(name)) if name.eq_ignore_ascii_case("jobs") => Collection::DevicesJobs,
            _ => return Err(self.expected("'modules' or 'jobs'")),
        };
        self.advance();
        Ok(collection)
    }

    /// Rules that need the whole statement; also names the projection.
    fn validate(
        &self,
        query: &mut Query,
        select_start: usize,
        spans: &[ItemSpan],
        group_start: Option<usize>,
    ) -> Result<(), QueryError> {
        if let Select::Items(items) = &query.select {
            for item in items {
                match &item.expr {
                    SelectExpr::Expr(e)
                    | SelectExpr::Aggregate(
                        Aggregate::Sum(e) | Aggregate::Avg(e) | Aggregate::Min(e) | Aggregate::Max(e),
                    ) => check_depth(e)?,
                    SelectExpr::Aggregate(Aggregate::Count) => {}
                }
            }
        }
        if let Some(filter) = &query.filter {
            check_depth(filter)?;
        }
        if query.from == Collection::DevicesJobs && (query.select != Select::All || group_start.is_some()) {
            return Err(QueryError::semantic(
                select_start,
                "FROM devices.jobs allows only SELECT * (no projections, aggregates or GROUP BY)",
            ));
        }
        if let Some(at) = group_start {
            if query.from != Collection::Devices {
                return Err(QueryError::semantic(at, "GROUP BY is only supported FROM devices"));
            }
        }
        let Select::Items(items) = &mut query.select else {
            if let Some(at) = group_start {
                return Err(QueryError::semantic(at, "SELECT * cannot be combined with GROUP BY"));
            }
            return Ok(());
        };
        let any_aggregate = items.iter().any(|i| matches!(i.expr, SelectExpr::Aggregate(_)));
        for (item, span) in items.iter().zip(spans) {
            let SelectExpr::Expr(expr) = &item.expr else { continue };
            let text = &self.text[span.start..span.end];
            if group_start.is_some() {
                let grouped = matches!(expr, Expr::Path(p) if query.group_by.contains(p));
                if !grouped {
                    return Err(QueryError::semantic(
                        span.start,
                        format_args!("'{}' is neither in GROUP BY nor inside an aggregate", shorten(text)),
                    ));
                }
            } else if any_aggregate {
                return Err(QueryError::semantic(
                    span.start,
                    format_args!(
                        "'{}' cannot be selected next to an aggregate without GROUP BY",
                        shorten(text)
                    ),
                ));
            }
        }
        let mut unnamed = 0;
        let mut seen: Vec<&str> = Vec::new();
        for item in items.iter_mut() {
            item.name = match (&item.alias, &item.expr) {
                (Some(alias), _) => alias.clone(),
                (None, SelectExpr::Expr(Expr::Path(path))) => path.last().to_owned(),
                (None, _) => {
                    unnamed += 1;
                    format!("${unnamed}")
                }
            };
        }
        for (item, span) in items.iter().zip(spans) {
            if seen.contains(&item.name.as_str()) {
                return Err(QueryError::semantic(
                    span.start,
                    format_args!("duplicate output name '{}' (use AS to rename)", item.name),
                ));
            }
            seen.push(&item.name);
        }
        Ok(())
    }

    // ----- expressions -----

    fn expr(&mut self) -> Result<Expr, QueryError> {
        self.or()
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while self.eat_kw(Keyword::Or) {
            let right = self.and()?;
            left = binary(BinaryOp::Or, left, right);
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.not()?;
        while self.eat_kw(Keyword::And) {
            let right = self.not()?;
            left = binary(BinaryOp::And, left, right);
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if self.eat_kw(Keyword::Not) {
            self.enter()?;
            let inner = self.not()?;
            self.leave();
            return Ok(Expr::Unary { op: UnaryOp::Not, expr: Box::new(inner) });
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.additive()?;
        loop {
            let op = match self.peek_kind() {
                Some(TokenKind::Eq) => BinaryOp::Eq,
                Some(TokenKind::Ne) => BinaryOp::Ne,
                Some(TokenKind::Lt) => BinaryOp::Lt,
                Some(TokenKind::Le) => BinaryOp::Le,
                Some(TokenKind::Gt) => BinaryOp::Gt,
                Some(TokenKind::Ge) => BinaryOp::Ge,
                Some(TokenKind::Keyword(Keyword::In)) | Some(TokenKind::Keyword(Keyword::Nin)) => {
                    let negated = self.at_kw(Keyword::Nin);
                    self.advance();
                    left = self.in_list(left, negated)?;
                    continue;
                }
                Some(TokenKind::Keyword(Keyword::Not))
                    if self.peek_kind_at(1) == Some(&TokenKind::Keyword(Keyword::In)) =>
                {
                    self.advance();
                    self.advance();
                    left = self.in_list(left, true)?;
                    continue;
                }
                _ => return Ok(left),
            };
            self.advance();
            let right = self.additive()?;
            left = binary(op, left, right);
        }
    }

    fn in_list(&mut self, expr: Expr, negated: bool) -> Result<Expr, QueryError> {
        if !self.eat(&TokenKind::LBracket) {
            return Err(self.expected("'[' starting a list of constants"));
        }
        let list = self.constant_list()?;
        Ok(Expr::In { expr: Box::new(expr), list, negated })
    }

    /// The constants of an array, after its `[`, through its `]`.
    fn constant_list(&mut self) -> Result<Vec<Literal>, QueryError> {
        let mut items = Vec::new();
        if self.eat(&TokenKind::RBracket) {
            return Ok(items);
        }
        loop {
            items.push(self.constant()?);
            if self.eat(&TokenKind::Comma) {
                continue;
            }
            if self.eat(&TokenKind::RBracket) {
                return Ok(items);
            }
            return Err(self.expected("',' or ']'"));
        }
    }

    fn constant(&mut self) -> Result<Literal, QueryError> {
        let literal = match self.peek_kind() {
            Some(&TokenKind::Number(n)) => Literal::Number(n),
            Some(TokenKind::Minus) => {
                if let Some(&TokenKind::Number(n)) = self.peek_kind_at(1) {
                    self.advance();
                    Literal::Number(-n)
                } else {
                    self.advance();
                    return Err(self.expected("a number"));
                }
            }
            Some(TokenKind::Str(s)) => Literal::String(s.clone()),
            Some(TokenKind::Keyword(Keyword::True)) => Literal::Bool(true),
            Some(TokenKind::Keyword(Keyword::False)) => Literal::Bool(false),
            Some(TokenKind::Keyword(Keyword::Null)) => Literal::Null,
            Some(TokenKind::LBracket) => {
                self.advance();
                self.enter()?;
                let items = self.constant_list()?;
                self.leave();
                return Ok(Literal::Array(items));
            }
            _ => return Err(self.expected("a constant (string, number, true, false, null or array)")),
        };
        self.advance();
        Ok(literal)
    }

    fn additive(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek_kind() {
                Some(TokenKind::Plus) => BinaryOp::Add,
                Some(TokenKind::Minus) => BinaryOp::Sub,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.multiplicative()?;
            left = binary(op, left, right);
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek_kind() {
                Some(TokenKind::Star) => BinaryOp::Mul,
                Some(TokenKind::Slash) => BinaryOp::Div,
                Some(TokenKind::Percent) => BinaryOp::Mod,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.unary()?;
            left = binary(op, left, right);
        }
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.eat(&TokenKind::Minus) {
            self.enter()?;
            let inner = self.unary()?;
            self.leave();
            return Ok(match inner {
                Expr::Literal(Literal::Number(n)) => Expr::Literal(Literal::Number(-n)),
                inner => Expr::Unary { op: UnaryOp::Neg, expr: Box::new(inner) },
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let literal = match self.peek_kind() {
            Some(&TokenKind::Number(n)) => Literal::Number(n),
            Some(TokenKind::Str(s)) => Literal::String(s.clone()),
            Some(TokenKind::Keyword(Keyword::True)) => Literal::Bool(true),
            Some(TokenKind::Keyword(Keyword::False)) => Literal::Bool(false),
            Some(TokenKind::Keyword(Keyword::Null)) => Literal::Null,
            Some(TokenKind::Keyword(Keyword::Undefined)) => Literal::Undefined,
            Some(TokenKind::LBracket) => {
                self.advance();
                self.enter()?;
                let items = self.constant_list()?;
                self.leave();
                return Ok(Expr::Literal(Literal::Array(items)));
            }
            Some(TokenKind::LParen) => {
                let open = self.here();
                self.advance();
                self.enter()?;
                let inner = self.expr()?;
                self.leave();
                if !self.eat(&TokenKind::RParen) {
                    return Err(self.expected(&format!("')' closing the '(' at position {open}")));
                }
                return Ok(inner);
            }
            Some(TokenKind::Ident(_)) if self.peek_kind_at(1) == Some(&TokenKind::LParen) => {
                return self.call();
            }
            Some(TokenKind::Ident(_)) | Some(TokenKind::QuotedSegment(_)) => {
                return Ok(Expr::Path(self.path_only()?));
            }
            Some(TokenKind::Keyword(
                Keyword::Group
                | Keyword::By
                | Keyword::As
                | Keyword::Top
                | Keyword::From
                | Keyword::In
                | Keyword::Nin
                | Keyword::Select
                | Keyword::Where,
            )) => {
                let word = self.peek().map_or("", |t| self.source(t));
                let mut err = self.expected("an expression");
                err.message.push_str(&format!(" (a keyword: write [[{word}]] for a property of that name)"));
                return Err(err);
            }
            _ => return Err(self.expected("an expression")),
        };
        self.advance();
        Ok(Expr::Literal(literal))
    }

    fn call(&mut self) -> Result<Expr, QueryError> {
        let at = self.here();
        let Some(Token { kind: TokenKind::Ident(name), .. }) = self.advance() else {
            return Err(self.expected("a function name"));
        };
        let upper = name.to_ascii_uppercase();
        if AGGREGATES.contains(&upper.as_str()) {
            return Err(QueryError::semantic(
                at,
                format_args!("the aggregate {upper}() is only allowed as an element of the SELECT list"),
            ));
        }
        let Some(func) = Function::from_name(&name) else {
            return Err(QueryError::semantic(at, format_args!("unknown function '{name}'")));
        };
        self.advance(); // '('
        self.enter()?;
        let mut args = Vec::new();
        if !self.eat(&TokenKind::RParen) {
            loop {
                args.push(self.expr()?);
                if self.eat(&TokenKind::Comma) {
                    continue;
                }
                if self.eat(&TokenKind::RParen) {
                    break;
                }
                return Err(self.expected("',' or ')'"));
            }
        }
        self.leave();
        let (min, max) = func.arity();
        if args.len() < min || max.is_some_and(|max| args.len() > max) {
            let wanted = match max {
                Some(max) if max == min => format!("{min} argument{}", if min == 1 { "" } else { "s" }),
                _ => format!("at least {min} arguments"),
            };
            return Err(QueryError::semantic(
                at,
                format_args!("{}() takes {wanted}, found {}", func.name(), args.len()),
            ));
        }
        Ok(Expr::Call { func, args })
    }

    /// A dotted path (`a.b.[[c-d]]`), unresolved.
    fn path_only(&mut self) -> Result<Path, QueryError> {
        let first = match self.peek_kind() {
            Some(TokenKind::Ident(s)) | Some(TokenKind::QuotedSegment(s)) => s.clone(),
            _ => return Err(self.expected("a property path")),
        };
        self.advance();
        let mut segments = vec![first];
        while self.eat(&TokenKind::Dot) {
            let segment = match self.peek() {
                Some(Token { kind: TokenKind::Ident(s) | TokenKind::QuotedSegment(s), .. }) => s.clone(),
                Some(token @ Token { kind: TokenKind::Keyword(_), .. }) => self.source(token).to_owned(),
                _ => return Err(self.expected("a property name")),
            };
            self.advance();
            segments.push(segment);
        }
        Ok(Path { segments })
    }
}

/// True for the tokens an expression can start with.
fn can_start_expr(kind: &TokenKind) -> bool {
    use Keyword as K;
    matches!(
        kind,
        TokenKind::Number(_)
            | TokenKind::Str(_)
            | TokenKind::Ident(_)
            | TokenKind::QuotedSegment(_)
            | TokenKind::LParen
            | TokenKind::LBracket
            | TokenKind::Minus
            | TokenKind::Keyword(K::True | K::False | K::Null | K::Undefined | K::Not)
    )
}

const AGGREGATES: [&str; 5] = ["COUNT", "SUM", "AVG", "MIN", "MAX"];

fn binary(op: BinaryOp, left: Expr, right: Expr) -> Expr {
    Expr::Binary { op, left: Box::new(left), right: Box::new(right) }
}

/// At most 40 characters of `text`, for messages.
fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn depth(expr: &Expr) -> usize {
    match expr {
        Expr::Literal(_) | Expr::Path(_) => 1,
        Expr::Unary { expr, .. } | Expr::In { expr, .. } => 1 + depth(expr),
        Expr::Binary { left, right, .. } => 1 + depth(left).max(depth(right)),
        Expr::Call { args, .. } => 1 + args.iter().map(depth).max().unwrap_or(0),
    }
}

fn check_depth(expr: &Expr) -> Result<(), QueryError> {
    if depth(expr) > MAX_DEPTH {
        return Err(QueryError::semantic(
            0,
            format_args!("the expression is more than {MAX_DEPTH} operators deep"),
        ));
    }
    Ok(())
}

// ----- path resolution -----

/// Top-level names of twins (and job rows), in canonical casing; a path's
/// first segment matching one case-insensitively takes this spelling.
const ROOT_NAMES: &[&str] = &[
    "deviceId",
    "moduleId",
    "modelId",
    "etag",
    "deviceEtag",
    "version",
    "status",
    "statusReason",
    "statusUpdateTime",
    "connectionState",
    "lastActivityTime",
    "cloudToDeviceMessageCount",
    "authenticationType",
    "x509Thumbprint",
    "capabilities",
    "deviceScope",
    "parentScopes",
    "tags",
    "properties",
    "configurations",
    "managedBy",
    "jobId",
    "jobType",
    "startTimeUtc",
    "endTimeUtc",
    "createdDateTimeUtc",
    "lastUpdatedDateTimeUtc",
    "outcome",
    "error",
];

/// System keys that may appear at any depth (`$metadata` nodes).
const DOLLAR_NAMES: &[&str] = &[
    "$metadata",
    "$version",
    "$lastUpdated",
    "$lastUpdatedVersion",
    "$lastUpdatedBy",
    "$lastUpdatedByDigest",
];

fn canonical(segment: &mut String, names: &[&str]) {
    if let Some(name) = names.iter().find(|n| n.eq_ignore_ascii_case(segment)) {
        if *name != segment.as_str() {
            *segment = (*name).to_owned();
        }
    }
}

/// Drops the collection prefix and gives system names their canonical
/// casing. User keys (under `tags`, `properties.desired`/`reported`,
/// configuration ids) are left exactly as written.
pub(crate) fn resolve_path(path: &mut Path, collection: Option<Collection>) {
    let segments = &mut path.segments;
    if segments.len() > 1 && segments[0].eq_ignore_ascii_case("devices") {
        segments.remove(0);
        let sub = match collection {
            Some(Collection::DevicesModules) => Some("modules"),
            Some(Collection::DevicesJobs) => Some("jobs"),
            _ => None,
        };
        if let Some(sub) = sub {
            if segments.len() > 1 && segments[0].eq_ignore_ascii_case(sub) {
                segments.remove(0);
            }
        }
    }
    let Some(first) = segments.first_mut() else { return };
    canonical(first, ROOT_NAMES);
    let (root, rest) = segments.split_at_mut(1);
    match (root[0].as_str(), rest) {
        ("properties", [section, ..]) => canonical(section, &["desired", "reported"]),
        ("x509Thumbprint", [which, ..]) => canonical(which, &["primaryThumbprint", "secondaryThumbprint"]),
        ("capabilities", [which, ..]) => canonical(which, &["iotEdge"]),
        ("configurations", [_, field, ..]) => canonical(field, &["status"]),
        ("outcome", [which, ..]) => canonical(which, &["deviceMethodResponse"]),
        _ => {}
    }
    for segment in segments.iter_mut().filter(|s| s.starts_with('$')) {
        canonical(segment, DOLLAR_NAMES);
    }
}

pub(crate) fn resolve_expr(expr: &mut Expr, collection: Option<Collection>) {
    match expr {
        Expr::Literal(_) => {}
        Expr::Path(path) => resolve_path(path, collection),
        Expr::Unary { expr, .. } | Expr::In { expr, .. } => resolve_expr(expr, collection),
        Expr::Binary { left, right, .. } => {
            resolve_expr(left, collection);
            resolve_expr(right, collection);
        }
        Expr::Call { args, .. } => args.iter_mut().for_each(|a| resolve_expr(a, collection)),
    }
}

fn resolve_query(query: &mut Query) {
    let collection = Some(query.from);
    if let Select::Items(items) = &mut query.select {
        for item in items {
            match &mut item.expr {
                SelectExpr::Expr(e)
                | SelectExpr::Aggregate(
                    Aggregate::Sum(e) | Aggregate::Avg(e) | Aggregate::Min(e) | Aggregate::Max(e),
                ) => resolve_expr(e, collection),
                SelectExpr::Aggregate(Aggregate::Count) => {}
            }
        }
    }
    if let Some(filter) = &mut query.filter {
        resolve_expr(filter, collection);
    }
    for path in &mut query.group_by {
        resolve_path(path, collection);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn path(text: &str) -> Expr {
        Expr::Path(Path { segments: text.split('.').map(str::to_owned).collect() })
    }

    fn str_lit(s: &str) -> Expr {
        Expr::Literal(Literal::String(s.into()))
    }

    fn num(n: f64) -> Expr {
        Expr::Literal(Literal::Number(n))
    }

    fn cond(text: &str) -> Expr {
        parse_condition(text).unwrap()
    }

    #[test]
    fn precedence_or_and_not_comparison_arithmetic() {
        // a = 1 OR NOT b = 2 AND c = 3  ==  (a = 1) OR ((NOT (b = 2)) AND (c = 3))
        let e = cond("a = 1 OR NOT b = 2 AND c = 3");
        let expected = binary(
            BinaryOp::Or,
            binary(BinaryOp::Eq, path("a"), num(1.0)),
            binary(
                BinaryOp::And,
                Expr::Unary { op: UnaryOp::Not, expr: Box::new(binary(BinaryOp::Eq, path("b"), num(2.0))) },
                binary(BinaryOp::Eq, path("c"), num(3.0)),
            ),
        );
        assert_eq!(e, expected);
        // 1 + 2 * -x > 3 - 4  ==  (1 + (2 * (-x))) > (3 - 4)
        let e = cond("1 + 2 * -x > 3 - 4");
        let neg_x = Expr::Unary { op: UnaryOp::Neg, expr: Box::new(path("x")) };
        let expected = binary(
            BinaryOp::Gt,
            binary(BinaryOp::Add, num(1.0), binary(BinaryOp::Mul, num(2.0), neg_x)),
            binary(BinaryOp::Sub, num(3.0), num(4.0)),
        );
        assert_eq!(e, expected);
        // left associativity
        assert_eq!(
            cond("a - b - c"),
            binary(BinaryOp::Sub, binary(BinaryOp::Sub, path("a"), path("b")), path("c"))
        );
        assert_eq!(
            cond("(a OR b) AND c"),
            binary(BinaryOp::And, binary(BinaryOp::Or, path("a"), path("b")), path("c"))
        );
    }

    #[test]
    fn in_nin_and_not_in() {
        let list =
            vec![Literal::String("a".into()), Literal::Number(-2.0), Literal::Null, Literal::Array(vec![])];
        assert_eq!(
            cond("x IN ['a', -2, null, []]"),
            Expr::In { expr: Box::new(path("x")), list: list.clone(), negated: false }
        );
        assert_eq!(
            cond("x NIN ['a', -2, null, []]"),
            Expr::In { expr: Box::new(path("x")), list: list.clone(), negated: true }
        );
        assert_eq!(
            cond("x not in ['a', -2, null, []]"),
            Expr::In { expr: Box::new(path("x")), list, negated: true }
        );
        // NOT x IN [...] is NOT (x IN [...])
        assert!(matches!(cond("NOT x IN [1]"), Expr::Unary { op: UnaryOp::Not, .. }));
    }

    #[test]
    fn paths_are_resolved() {
        assert_eq!(cond("devices.DeviceId"), path("deviceId"));
        assert_eq!(cond("DEVICES.Tags.Location"), path("tags.Location"));
        assert_eq!(cond("Properties.Reported.FW.$VERSION"), path("properties.reported.FW.$version"));
        assert_eq!(
            cond("configurations.[[Firmware-285]].Status"),
            Expr::Path(Path {
                segments: vec!["configurations".into(), "Firmware-285".into(), "status".into()]
            })
        );
        assert_eq!(cond("X509THUMBPRINT.primarythumbprint"), path("x509Thumbprint.primaryThumbprint"));
        assert_eq!(cond("capabilities.IOTEDGE"), path("capabilities.iotEdge"));
        assert_eq!(cond("tags.group.in.select"), path("tags.group.in.select"));
        assert_eq!(cond("devices"), path("devices"));
        assert_eq!(cond("[[tags]].x"), path("tags.x"));
        let q = parse_query(
            "SELECT devices.modules.moduleId FROM devices.modules WHERE devices.modules.Status = 'x'",
        )
        .unwrap();
        let Select::Items(items) = &q.select else { panic!() };
        assert_eq!(items[0].expr, SelectExpr::Expr(path("moduleId")));
        assert_eq!(items[0].name, "moduleId");
        assert_eq!(q.filter, Some(binary(BinaryOp::Eq, path("status"), str_lit("x"))));
        let q = parse_query("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'j1'").unwrap();
        assert_eq!(q.filter, Some(binary(BinaryOp::Eq, path("jobId"), str_lit("j1"))));
        assert_eq!(q.from, Collection::DevicesJobs);
    }

    #[test]
    fn statement_parts() {
        let q = parse_query(
            "select top 5 properties.reported.fw.status as status, count() as n from devices \
             where tags.a = 1 group by properties.reported.fw.status",
        )
        .unwrap();
        assert_eq!(q.top, Some(5));
        assert_eq!(q.from, Collection::Devices);
        assert_eq!(
            q.group_by,
            vec![Path {
                segments: vec!["properties".into(), "reported".into(), "fw".into(), "status".into()]
            }]
        );
        let Select::Items(items) = &q.select else { panic!() };
        assert_eq!(items[0].alias.as_deref(), Some("status"));
        assert_eq!(
            items[1],
            SelectItem {
                expr: SelectExpr::Aggregate(Aggregate::Count),
                alias: Some("n".into()),
                name: "n".into()
            }
        );
        assert!(q.is_aggregate());
        assert!(!parse_query("SELECT * FROM devices").unwrap().is_aggregate());
    }

    #[test]
    fn output_names() {
        let q = parse_query("SELECT DeviceId, COUNT(), properties.reported.x AS [[group]], LOWER(status), 1 + 2 AS three FROM devices GROUP BY deviceId, properties.reported.x, status");
        // LOWER(status) is neither grouped nor aggregated.
        assert!(q.is_err());
        let q = parse_query("SELECT DeviceId, COUNT(), SUM(version), tags.a AS [[group]] FROM devices GROUP BY deviceId, tags.a").unwrap();
        let Select::Items(items) = &q.select else { panic!() };
        let names: Vec<_> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["deviceId", "$1", "$2", "group"]);
        let q =
            parse_query("SELECT LOWER(deviceId), tags.x, 3 AS three, UPPER(status) FROM devices").unwrap();
        let Select::Items(items) = &q.select else { panic!() };
        let names: Vec<_> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["$1", "x", "three", "$2"]);
    }

    #[test]
    fn star_condition_and_constant_folding() {
        assert_eq!(cond("*"), Expr::Literal(Literal::Bool(true)));
        assert_eq!(cond("  *  "), Expr::Literal(Literal::Bool(true)));
        assert_eq!(cond("x = -5"), binary(BinaryOp::Eq, path("x"), num(-5.0)));
        assert_eq!(cond("x = - - 5"), binary(BinaryOp::Eq, path("x"), num(5.0)));
    }

    #[test]
    fn functions_resolve_case_insensitively() {
        assert_eq!(cond("is_defined(x)"), Expr::Call { func: Function::IsDefined, args: vec![path("x")] });
        assert_eq!(
            cond("StartsWith(x, 'a')"),
            Expr::Call { func: Function::StartsWith, args: vec![path("x"), str_lit("a")] }
        );
        assert_eq!(cond("starts_with(x, 'a')"), cond("STARTSWITH(x, 'a')"));
    }

    #[test]
    fn nesting_limits() {
        let deep = format!("{}x{}", "(".repeat(MAX_NESTING + 1), ")".repeat(MAX_NESTING + 1));
        assert!(parse_condition(&deep).unwrap_err().message.contains("nests more than 64 levels"));
        let ok = format!("{}x{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(parse_condition(&ok).is_ok());
        let long_chain = vec!["x=1"; MAX_DEPTH + 1].join(" OR ");
        assert!(parse_condition(&long_chain).unwrap_err().message.contains("more than 1024 operators deep"));
        let chain = vec!["x = 1"; 500].join(" OR ");
        assert!(parse_condition(&chain).is_ok());
        let nots = format!("{}x", "NOT ".repeat(MAX_NESTING + 1));
        assert!(parse_condition(&nots).is_err());
    }

    #[test]
    fn paths_lists_what_a_query_reads() {
        let q = parse_query(
            "SELECT tags.a AS a, SUM(properties.reported.n) AS s FROM devices WHERE STARTSWITH(deviceId, 'x') GROUP BY tags.a",
        )
        .unwrap();
        let paths: Vec<String> = q.paths().iter().map(|p| p.to_string()).collect();
        assert_eq!(paths, ["tags.a", "properties.reported.n", "deviceId", "tags.a"]);
        let c = cond("NOT (tags.x IN [1] OR -tags.y > 2)");
        let paths: Vec<String> = c.paths().iter().map(|p| p.to_string()).collect();
        assert_eq!(paths, ["tags.x", "tags.y"]);
    }

    #[test]
    fn path_display_quotes_what_needs_it() {
        let p = Path { segments: vec!["configurations".into(), "fw-1".into(), "status".into()] };
        assert_eq!(p.to_string(), "configurations.[[fw-1]].status");
        assert_eq!(cond(&p.to_string()), Expr::Path(p));
    }
}
