//! The subset of SOQL crmsync writes and the sandbox answers: `SELECT`
//! fields `FROM` one object, a `WHERE` of comparisons and `IN` lists joined
//! by `AND`, `OR`, `NOT` and parentheses, `ORDER BY`, `LIMIT`.
//!
//! The connector builds a [`Query`] and sends its text; the sandbox parses
//! the text back with [`parse`]. Keywords are case-insensitive, as in SOQL;
//! date-times are written in UTC to the second (`2024-05-01T10:20:30Z`), the
//! precision SOQL literals have, though the parser also takes fractions and
//! offsets.

use std::fmt;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// A `SELECT` statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub fields: Vec<String>,
    pub object: String,
    pub filter: Option<Cond>,
    pub order_by: Vec<(String, Order)>,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// A `WHERE` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Cmp { field: String, op: Op, value: Literal },
    In { field: String, values: Vec<Literal>, negated: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    /// A number, as written (SOQL numbers are decimal text).
    Num(String),
    Bool(bool),
    Null,
    DateTime(DateTime<Utc>),
    Date(NaiveDate),
}

impl Query {
    /// `SELECT fields FROM object`, to be refined with the builder methods.
    pub fn select<S: Into<String>>(fields: impl IntoIterator<Item = S>, object: impl Into<String>) -> Self {
        Query {
            fields: fields.into_iter().map(Into::into).collect(),
            object: object.into(),
            filter: None,
            order_by: Vec::new(),
            limit: None,
        }
    }

    /// Adds a condition, `AND`ed with any already there.
    pub fn and_where(mut self, cond: Cond) -> Self {
        self.filter = Some(match self.filter.take() {
            None => cond,
            Some(Cond::And(mut all)) => {
                all.push(cond);
                Cond::And(all)
            }
            Some(other) => Cond::And(vec![other, cond]),
        });
        self
    }

    pub fn order_by(mut self, field: impl Into<String>, order: Order) -> Self {
        self.order_by.push((field.into(), order));
        self
    }

    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
}

impl Cond {
    pub fn cmp(field: impl Into<String>, op: Op, value: Literal) -> Self {
        Cond::Cmp { field: field.into(), op, value }
    }

    pub fn is_in(field: impl Into<String>, values: impl IntoIterator<Item = Literal>) -> Self {
        Cond::In { field: field.into(), values: values.into_iter().collect(), negated: false }
    }
}

impl Literal {
    pub fn str(s: impl Into<String>) -> Self {
        Literal::Str(s.into())
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "'{}'", escape(s)),
            Literal::Num(n) => f.write_str(n),
            Literal::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Literal::Null => f.write_str("null"),
            Literal::DateTime(t) => {
                let whole = t.timestamp_subsec_nanos() == 0;
                f.write_str(&t.to_rfc3339_opts(if whole { SecondsFormat::Secs } else { SecondsFormat::Millis }, true))
            }
            Literal::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
        }
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = |f: &mut fmt::Formatter<'_>, all: &[Cond], sep: &str| -> fmt::Result {
            for (i, c) in all.iter().enumerate() {
                if i > 0 {
                    write!(f, " {sep} ")?;
                }
                match c {
                    Cond::And(_) | Cond::Or(_) => write!(f, "({c})")?,
                    _ => write!(f, "{c}")?,
                }
            }
            Ok(())
        };
        match self {
            Cond::And(all) => joined(f, all, "AND"),
            Cond::Or(all) => joined(f, all, "OR"),
            Cond::Not(c) => write!(f, "NOT ({c})"),
            Cond::Cmp { field, op, value } => write!(f, "{field} {} {value}", op.as_str()),
            Cond::In { field, values, negated } => {
                write!(f, "{field} {}IN (", if *negated { "NOT " } else { "" })?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SELECT {} FROM {}", self.fields.join(", "), self.object)?;
        if let Some(c) = &self.filter {
            write!(f, " WHERE {c}")?;
        }
        if !self.order_by.is_empty() {
            let parts: Vec<String> = self
                .order_by
                .iter()
                .map(|(field, o)| match o {
                    Order::Asc => format!("{field} ASC"),
                    Order::Desc => format!("{field} DESC"),
                })
                .collect();
            write!(f, " ORDER BY {}", parts.join(", "))?;
        }
        if let Some(n) = self.limit {
            write!(f, " LIMIT {n}")?;
        }
        Ok(())
    }
}

/// Why a query text was refused, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MALFORMED_QUERY at character {at}: {message}")]
pub struct SoqlError {
    pub at: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Stamp(String),
    Sym(&'static str),
}

fn tokens(s: &str) -> Result<Vec<(usize, Tok)>, SoqlError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at: usize, m: &str| SoqlError { at, message: m.to_owned() };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut v = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err(start, "unterminated string")),
                    Some('\'') => break,
                    Some('\\') => {
                        let e = chars.get(i + 1).ok_or_else(|| err(i, "dangling escape"))?;
                        v.push(match e {
                            'n' => '\n',
                            'r' => '\r',
                            't' => '\t',
                            other => *other,
                        });
                        i += 2;
                    }
                    Some(ch) => {
                        v.push(*ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            out.push((start, Tok::Str(v)));
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A date or date-time (2024-05-01, 2024-05-01T10:20:30.000Z) or a number.
            let is_date = chars.len() >= i + 10 && chars[i..i + 4].iter().all(char::is_ascii_digit) && chars[i + 4] == '-';
            if is_date {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '-' | ':' | '.' | '+')) {
                    i += 1;
                }
                out.push((start, Tok::Stamp(chars[start..i].iter().collect())));
            } else {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                out.push((start, Tok::Num(chars[start..i].iter().collect())));
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
            out.push((start, Tok::Ident(chars[start..i].iter().collect())));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = match two.as_str() {
                "<=" => Some("<="),
                ">=" => Some(">="),
                "!=" => Some("!="),
                "<>" => Some("!="),
                _ => None,
            };
            if let Some(sym) = sym {
                out.push((start, Tok::Sym(sym)));
                i += 2;
                continue;
            }
            let sym = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                _ => return Err(err(i, &format!("unexpected character {c:?}"))),
            };
            out.push((start, Tok::Sym(sym)));
            i += 1;
        }
    }
    Ok(out)
}

/// Longest query text taken: Salesforce refuses SOQL statements over
/// 100,000 characters.
pub const MAX_QUERY_CHARS: usize = 100_000;

/// Deepest nesting of parentheses and `NOT`s in a `WHERE` clause. The
/// parser, the printer and the sandbox's SQL translation all recurse once
/// per level, so without a bound about 2,500 nested parentheses overflowed
/// the stack and aborted the whole server; no real filter comes near it.
pub const MAX_NESTING: usize = 64;

struct Parser {
    toks: Vec<(usize, Tok)>,
    i: usize,
    len: usize,
    /// Parentheses and `NOT`s open around the current condition.
    depth: usize,
}

impl Parser {
    fn at(&self) -> usize {
        self.toks.get(self.i).map_or(self.len, |(p, _)| *p)
    }

    fn err<T>(&self, m: impl Into<String>) -> Result<T, SoqlError> {
        Err(SoqlError { at: self.at(), message: m.into() })
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|(_, t)| t)
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(w)) if w.eq_ignore_ascii_case(k)) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, k: &str) -> Result<(), SoqlError> {
        if self.keyword(k) { Ok(()) } else { self.err(format!("expected {k}")) }
    }

    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Result<String, SoqlError> {
        match self.peek() {
            Some(Tok::Ident(w)) if !is_reserved(w) => {
                let w = w.clone();
                self.i += 1;
                Ok(w)
            }
            _ => self.err("expected a field or object name"),
        }
    }

    fn literal(&mut self) -> Result<Literal, SoqlError> {
        let at = self.at();
        let lit = match self.peek().cloned() {
            Some(Tok::Str(s)) => Literal::Str(s),
            Some(Tok::Num(n)) => Literal::Num(n),
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("null") => Literal::Null,
            Some(Tok::Stamp(s)) => {
                if s.len() == 10 {
                    Literal::Date(
                        NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|e| SoqlError { at, message: format!("bad date {s}: {e}") })?,
                    )
                } else {
                    let t = DateTime::parse_from_rfc3339(&s)
                        .or_else(|_| DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f%z"))
                        .map_err(|e| SoqlError { at, message: format!("bad date-time {s}: {e}") })?;
                    Literal::DateTime(t.with_timezone(&Utc))
                }
            }
            _ => return self.err("expected a value"),
        };
        self.i += 1;
        Ok(lit)
    }

    fn cond(&mut self) -> Result<Cond, SoqlError> {
        let mut any = vec![self.and()?];
        while self.keyword("OR") {
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 { any.pop().expect("one") } else { Cond::Or(any) })
    }

    fn and(&mut self) -> Result<Cond, SoqlError> {
        let mut all = vec![self.unary()?];
        while self.keyword("AND") {
            all.push(self.unary()?);
        }
        Ok(if all.len() == 1 { all.pop().expect("one") } else { Cond::And(all) })
    }

    /// One level deeper, or refused past [`MAX_NESTING`].
    fn nest(&mut self) -> Result<(), SoqlError> {
        if self.depth >= MAX_NESTING {
            return self.err(format!("the condition nests deeper than {MAX_NESTING} levels"));
        }
        self.depth += 1;
        Ok(())
    }

    fn unary(&mut self) -> Result<Cond, SoqlError> {
        if self.keyword("NOT") {
            // `NOT (…)`, as conditions print, is one level: the parenthesis
            // counts it.
            let bare = !matches!(self.peek(), Some(Tok::Sym("(")));
            if bare {
                self.nest()?;
            }
            let inner = self.unary()?;
            if bare {
                self.depth -= 1;
            }
            return Ok(Cond::Not(Box::new(inner)));
        }
        if self.sym("(") {
            self.nest()?;
            let c = self.cond()?;
            if !self.sym(")") {
                return self.err("expected )");
            }
            self.depth -= 1;
            return Ok(c);
        }
        let field = self.ident()?;
        let negated = self.keyword("NOT");
        if self.keyword("IN") {
            if !self.sym("(") {
                return self.err("expected ( after IN");
            }
            let mut values = vec![self.literal()?];
            while self.sym(",") {
                values.push(self.literal()?);
            }
            if !self.sym(")") {
                return self.err("expected ) after the IN list");
            }
            return Ok(Cond::In { field, values, negated });
        }
        if negated {
            return self.err("expected IN after NOT");
        }
        let op = match self.peek() {
            Some(Tok::Sym("=")) => Op::Eq,
            Some(Tok::Sym("!=")) => Op::Ne,
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            _ => return self.err("expected a comparison"),
        };
        self.i += 1;
        Ok(Cond::Cmp { field, op, value: self.literal()? })
    }
}

fn is_reserved(w: &str) -> bool {
    ["SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "ORDER", "BY", "LIMIT", "ASC", "DESC", "NULLS", "TRUE", "FALSE", "NULL"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(w))
}

/// Parses a query in the subset.
pub fn parse(text: &str) -> Result<Query, SoqlError> {
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(SoqlError { at: MAX_QUERY_CHARS, message: format!("the query is longer than {MAX_QUERY_CHARS} characters") });
    }
    let mut p = Parser { toks: tokens(text)?, i: 0, len: text.len(), depth: 0 };
    p.expect_keyword("SELECT")?;
    let mut fields = vec![p.ident()?];
    while p.sym(",") {
        fields.push(p.ident()?);
    }
    p.expect_keyword("FROM")?;
    let object = p.ident()?;
    let filter = if p.keyword("WHERE") { Some(p.cond()?) } else { None };
    let mut order_by = Vec::new();
    if p.keyword("ORDER") {
        p.expect_keyword("BY")?;
        loop {
            let field = p.ident()?;
            let order = if p.keyword("DESC") {
                Order::Desc
            } else {
                p.keyword("ASC");
                Order::Asc
            };
            if p.keyword("NULLS") && !(p.keyword("FIRST") || p.keyword("LAST")) {
                return p.err("expected FIRST or LAST");
            }
            order_by.push((field, order));
            if !p.sym(",") {
                break;
            }
        }
    }
    let limit = if p.keyword("LIMIT") {
        match p.literal()? {
            Literal::Num(n) => Some(n.parse().map_err(|_| SoqlError { at: p.at(), message: format!("bad LIMIT {n}") })?),
            _ => return p.err("expected a number after LIMIT"),
        }
    } else {
        None
    };
    if p.i < p.toks.len() {
        return p.err("unexpected text after the query");
    }
    Ok(Query { fields, object, filter, order_by, limit })
}

#[cfg(test)]
mod tests;
