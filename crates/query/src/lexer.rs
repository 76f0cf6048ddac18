//! The tokenizer: query text → tokens with byte positions.
//!
//! - Keywords are case-insensitive: `SELECT TOP FROM WHERE GROUP BY AS AND OR
//!   NOT IN NIN true false null undefined`.
//! - Identifiers start with a letter, `_` or `$` and go on with letters,
//!   digits, `_` and `$` (so `$metadata` and `$version` are identifiers).
//!   Right after a `.`, a run of letters and digits starting with a digit is
//!   an identifier too (`tags.1st`).
//! - Strings are in `'…'` or `"…"` with the escapes `\'` `\"` `\\` `\/` `\b`
//!   `\f` `\n` `\r` `\t` `\uXXXX` (surrogate pairs combine).
//! - Numbers: decimal with optional fraction and exponent (`1`, `2.5`,
//!   `1e-3`), or hexadecimal (`0x1F`); a sign is a separate `-` token.
//! - `[[name]]` is one quoted path segment holding everything up to the first
//!   `]]`. Because `[[` always starts a segment, an array literal whose first
//!   element is an array needs a space: `[ [1, 2] ]`.
//! - Operators `= != <> < <= > >= + - * / %` and punctuation `( ) [ ] , .`.

use crate::error::QueryError;

/// A keyword. Keywords cannot be identifiers, except as path segments after
/// a `.` (`tags.group` is the path `tags` → `group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Select,
    Top,
    From,
    Where,
    Group,
    By,
    As,
    And,
    Or,
    Not,
    In,
    Nin,
    True,
    False,
    Null,
    Undefined,
}

impl Keyword {
    fn lookup(word: &str) -> Option<Self> {
        const ALL: [(&str, Keyword); 16] = [
            ("SELECT", Keyword::Select),
            ("TOP", Keyword::Top),
            ("FROM", Keyword::From),
            ("WHERE", Keyword::Where),
            ("GROUP", Keyword::Group),
            ("BY", Keyword::By),
            ("AS", Keyword::As),
            ("AND", Keyword::And),
            ("OR", Keyword::Or),
            ("NOT", Keyword::Not),
            ("IN", Keyword::In),
            ("NIN", Keyword::Nin),
            ("TRUE", Keyword::True),
            ("FALSE", Keyword::False),
            ("NULL", Keyword::Null),
            ("UNDEFINED", Keyword::Undefined),
        ];
        ALL.iter().find(|(name, _)| name.eq_ignore_ascii_case(word)).map(|&(_, kw)| kw)
    }
}

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    /// An identifier (not a keyword), as written.
    Ident(String),
    Keyword(Keyword),
    /// A string literal, escapes resolved.
    Str(String),
    Number(f64),
    /// `[[name]]`: the name between the brackets.
    QuotedSegment(String),
    Eq,
    /// `!=` or `<>`.
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
}

/// A token and the byte range `start..end` of the text it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

/// Splits `text` into tokens. Whitespace separates tokens and is dropped.
pub fn tokenize(text: &str) -> Result<Vec<Token>, QueryError> {
    let mut lexer = Lexer { text, pos: 0, tokens: Vec::new() };
    lexer.run()?;
    Ok(lexer.tokens)
}

struct Lexer<'t> {
    text: &'t str,
    pos: usize,
    tokens: Vec<Token>,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn is_ident_continue(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn peek_at(&self, byte_offset: usize) -> Option<char> {
        self.text.get(self.pos + byte_offset..).and_then(|s| s.chars().next())
    }

    fn push(&mut self, kind: TokenKind, start: usize) {
        self.tokens.push(Token { kind, start, end: self.pos });
    }

    fn after_dot(&self) -> bool {
        matches!(self.tokens.last(), Some(Token { kind: TokenKind::Dot, .. }))
    }

    fn run(&mut self) -> Result<(), QueryError> {
        while let Some(c) = self.peek() {
            let start = self.pos;
            if c.is_whitespace() {
                self.pos += c.len_utf8();
                continue;
            }
            if is_ident_start(c) || (c.is_ascii_digit() && self.after_dot()) {
                self.ident(start);
                continue;
            }
            if c.is_ascii_digit() {
                self.number(start)?;
                continue;
            }
            if c == '\'' || c == '"' {
                self.string(start, c)?;
                continue;
            }
            if c == '[' && self.peek_at(1) == Some('[') {
                self.quoted_segment(start)?;
                continue;
            }
            let two = self.text.get(self.pos..self.pos + 2);
            let (kind, len) = match (c, two) {
                (_, Some("!=")) | (_, Some("<>")) => (TokenKind::Ne, 2),
                (_, Some("<=")) => (TokenKind::Le, 2),
                (_, Some(">=")) => (TokenKind::Ge, 2),
                ('=', _) => (TokenKind::Eq, 1),
                ('<', _) => (TokenKind::Lt, 1),
                ('>', _) => (TokenKind::Gt, 1),
                ('+', _) => (TokenKind::Plus, 1),
                ('-', _) => (TokenKind::Minus, 1),
                ('*', _) => (TokenKind::Star, 1),
                ('/', _) => (TokenKind::Slash, 1),
                ('%', _) => (TokenKind::Percent, 1),
                ('(', _) => (TokenKind::LParen, 1),
                (')', _) => (TokenKind::RParen, 1),
                ('[', _) => (TokenKind::LBracket, 1),
                (']', _) => (TokenKind::RBracket, 1),
                (',', _) => (TokenKind::Comma, 1),
                ('.', _) => (TokenKind::Dot, 1),
                _ => {
                    return Err(QueryError::syntax(start, format_args!("unexpected character '{c}'")));
                }
            };
            self.pos += len;
            self.push(kind, start);
        }
        Ok(())
    }

    fn ident(&mut self, start: usize) {
        while let Some(c) = self.peek().filter(|&c| is_ident_continue(c)) {
            self.pos += c.len_utf8();
        }
        let word = &self.text[start..self.pos];
        let kind = match Keyword::lookup(word) {
            Some(kw) => TokenKind::Keyword(kw),
            None => TokenKind::Ident(word.to_owned()),
        };
        self.push(kind, start);
    }

    fn eat_digits(&mut self, radix: u32) -> usize {
        let from = self.pos;
        while self.peek().is_some_and(|c| c.is_digit(radix)) {
            self.pos += 1;
        }
        self.pos - from
    }

    fn number(&mut self, start: usize) -> Result<(), QueryError> {
        let invalid = |end: usize, text: &str| {
            QueryError::syntax(start, format_args!("invalid number '{}'", &text[start..end]))
        };
        let value = if self.text[start..].starts_with("0x") || self.text[start..].starts_with("0X") {
            self.pos += 2;
            if self.eat_digits(16) == 0 {
                return Err(invalid(self.pos, self.text));
            }
            let digits = &self.text[start + 2..self.pos];
            u64::from_str_radix(digits, 16).map_err(|_| invalid(self.pos, self.text))? as f64
        } else {
            self.eat_digits(10);
            if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
                self.eat_digits(10);
            }
            if matches!(self.peek(), Some('e' | 'E')) {
                self.pos += 1;
                if matches!(self.peek(), Some('+' | '-')) {
                    self.pos += 1;
                }
                if self.eat_digits(10) == 0 {
                    return Err(invalid(self.pos, self.text));
                }
            }
            let value: f64 = self.text[start..self.pos].parse().map_err(|_| invalid(self.pos, self.text))?;
            if !value.is_finite() {
                return Err(QueryError::syntax(
                    start,
                    format_args!("number '{}' is out of range", &self.text[start..self.pos]),
                ));
            }
            value
        };
        if self.peek().is_some_and(is_ident_continue) {
            let mut end = self.pos;
            for c in self.text[end..].chars().take_while(|&c| is_ident_continue(c)) {
                end += c.len_utf8();
            }
            return Err(invalid(end, self.text));
        }
        self.push(TokenKind::Number(value), start);
        Ok(())
    }

    fn string(&mut self, start: usize, quote: char) -> Result<(), QueryError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(QueryError::syntax(
                    start,
                    format_args!("unterminated string: expected a closing {quote} before the end of input"),
                ));
            };
            let at = self.pos;
            self.pos += c.len_utf8();
            if c == quote {
                break;
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let escaped = self.peek().ok_or_else(|| {
                QueryError::syntax(at, "unterminated string: expected an escaped character after '\\'")
            })?;
            self.pos += escaped.len_utf8();
            match escaped {
                '\'' | '"' | '\\' | '/' => out.push(escaped),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => out.push(self.unicode_escape(at)?),
                other => {
                    return Err(QueryError::syntax(
                        at,
                        format_args!("invalid escape '\\{other}' (use \\' \\\" \\\\ or \\uXXXX)"),
                    ));
                }
            }
        }
        self.push(TokenKind::Str(out), start);
        Ok(())
    }

    /// The four hex digits after `\u` (the `\u` is consumed); a high
    /// surrogate must be followed by `\u` and a low one.
    fn unicode_escape(&mut self, at: usize) -> Result<char, QueryError> {
        let bad =
            || QueryError::syntax(at, "invalid \\u escape: expected four hex digits naming a character");
        let hex4 = |lexer: &mut Self| -> Result<u32, QueryError> {
            let digits = lexer.text.get(lexer.pos..lexer.pos + 4).ok_or_else(bad)?;
            if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            lexer.pos += 4;
            u32::from_str_radix(digits, 16).map_err(|_| bad())
        };
        let first = hex4(self)?;
        let code = if (0xD800..0xDC00).contains(&first) {
            if !self.text[self.pos..].starts_with("\\u") {
                return Err(bad());
            }
            self.pos += 2;
            let second = hex4(self)?;
            if !(0xDC00..0xE000).contains(&second) {
                return Err(bad());
            }
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(bad)
    }

    fn quoted_segment(&mut self, start: usize) -> Result<(), QueryError> {
        let body_start = start + 2;
        let Some(len) = self.text[body_start..].find("]]") else {
            return Err(QueryError::syntax(
                start,
                "unterminated '[[': expected ']]' to close the segment name",
            ));
        };
        if len == 0 {
            return Err(QueryError::syntax(start, "empty segment name '[[]]'"));
        }
        let name = self.text[body_start..body_start + len].to_owned();
        self.pos = body_start + len + 2;
        self.push(TokenKind::QuotedSegment(name), start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn kinds(text: &str) -> Vec<TokenKind> {
        tokenize(text).unwrap().into_iter().map(|t| t.kind).collect()
    }

    fn err(text: &str) -> String {
        tokenize(text).unwrap_err().message
    }

    #[test]
    fn keywords_are_case_insensitive_and_identifiers_keep_their_case() {
        use TokenKind as T;
        assert_eq!(
            kinds("select Top fRoM deviceId $metadata nin Undefined"),
            [
                T::Keyword(Keyword::Select),
                T::Keyword(Keyword::Top),
                T::Keyword(Keyword::From),
                T::Ident("deviceId".into()),
                T::Ident("$metadata".into()),
                T::Keyword(Keyword::Nin),
                T::Keyword(Keyword::Undefined),
            ]
        );
    }

    #[test]
    fn operators_and_positions() {
        use TokenKind as T;
        let tokens = tokenize("a<=b <> c!=d>=e<f>g=h+-*/%(),.[]").unwrap();
        let k: Vec<_> = tokens.iter().map(|t| t.kind.clone()).collect();
        assert_eq!(
            k,
            [
                T::Ident("a".into()),
                T::Le,
                T::Ident("b".into()),
                T::Ne,
                T::Ident("c".into()),
                T::Ne,
                T::Ident("d".into()),
                T::Ge,
                T::Ident("e".into()),
                T::Lt,
                T::Ident("f".into()),
                T::Gt,
                T::Ident("g".into()),
                T::Eq,
                T::Ident("h".into()),
                T::Plus,
                T::Minus,
                T::Star,
                T::Slash,
                T::Percent,
                T::LParen,
                T::RParen,
                T::Comma,
                T::Dot,
                T::LBracket,
                T::RBracket,
            ]
        );
        assert_eq!((tokens[1].start, tokens[1].end), (1, 3));
        assert_eq!((tokens[3].start, tokens[3].end), (5, 7));
    }

    #[test]
    fn strings_with_both_quotes_and_escapes() {
        assert_eq!(
            kinds(r#"'it\'s' "say \"hi\"" 'a\\b' '\u00e9\ud83d\ude00' "\n""#),
            [
                TokenKind::Str("it's".into()),
                TokenKind::Str("say \"hi\"".into()),
                TokenKind::Str("a\\b".into()),
                TokenKind::Str("é😀".into()),
                TokenKind::Str("\n".into()),
            ]
        );
        assert_eq!(
            kinds(r#"'say "hi"' "it's""#),
            [TokenKind::Str("say \"hi\"".into()), TokenKind::Str("it's".into())]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            kinds("0 42 2.5 1e3 1.5E-2 0x1F 0XfF"),
            [
                TokenKind::Number(0.0),
                TokenKind::Number(42.0),
                TokenKind::Number(2.5),
                TokenKind::Number(1000.0),
                TokenKind::Number(0.015),
                TokenKind::Number(31.0),
                TokenKind::Number(255.0),
            ]
        );
    }

    #[test]
    fn quoted_segments_and_digit_segments_after_a_dot() {
        assert_eq!(
            kinds("configurations.[[firmware-285]].status"),
            [
                TokenKind::Ident("configurations".into()),
                TokenKind::Dot,
                TokenKind::QuotedSegment("firmware-285".into()),
                TokenKind::Dot,
                TokenKind::Ident("status".into()),
            ]
        );
        assert_eq!(
            kinds("tags.1st"),
            [TokenKind::Ident("tags".into()), TokenKind::Dot, TokenKind::Ident("1st".into())]
        );
        assert_eq!(
            kinds("[ [1]]"),
            [
                TokenKind::LBracket,
                TokenKind::LBracket,
                TokenKind::Number(1.0),
                TokenKind::RBracket,
                TokenKind::RBracket,
            ]
        );
    }

    #[test]
    fn lexical_errors_name_their_position() {
        assert_eq!(
            err("a = 'abc"),
            "Syntax error at position 4: unterminated string: expected a closing ' before the end of input"
        );
        assert_eq!(
            err("a = \"x\\q\""),
            "Syntax error at position 6: invalid escape '\\q' (use \\' \\\" \\\\ or \\uXXXX)"
        );
        assert_eq!(
            err("a = '\\u12'"),
            "Syntax error at position 5: invalid \\u escape: expected four hex digits naming a character"
        );
        assert_eq!(
            err("a = '\\ud800x'"),
            "Syntax error at position 5: invalid \\u escape: expected four hex digits naming a character"
        );
        assert_eq!(err("a # b"), "Syntax error at position 2: unexpected character '#'");
        assert_eq!(err("a ! b"), "Syntax error at position 2: unexpected character '!'");
        assert_eq!(err("x = 12ab"), "Syntax error at position 4: invalid number '12ab'");
        assert_eq!(err("x = 0x"), "Syntax error at position 4: invalid number '0x'");
        assert_eq!(err("x = 1e"), "Syntax error at position 4: invalid number '1e'");
        assert_eq!(err("x = 1e999"), "Syntax error at position 4: number '1e999' is out of range");
        assert_eq!(
            err("c.[[abc"),
            "Syntax error at position 2: unterminated '[[': expected ']]' to close the segment name"
        );
        assert_eq!(err("c.[[]]"), "Syntax error at position 2: empty segment name '[[]]'");
    }

    #[test]
    fn positions_are_byte_offsets() {
        let tokens = tokenize("'é' = x").unwrap();
        assert_eq!(tokens[1].start, 5);
        assert_eq!(err("'é' # x"), "Syntax error at position 5: unexpected character '#'");
    }
}
