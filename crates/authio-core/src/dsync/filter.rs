//! SCIM filters (RFC 7644 3.4.2.2) and PATCH paths (3.5.2), parsed and evaluated on a
//! resource's JSON. Attribute names are matched without case (RFC 7643 2.1); string values
//! too, except `id` and `externalId`, which are case-exact.
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Or(Box<Filter>, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Present(AttrPath),
    Compare(AttrPath, Op, Value),
    /// `emails[type eq "work"]`: some element of the multi-valued attribute matches.
    ValuePath(AttrPath, Box<Filter>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

/// `name`, `name.givenName`, or with a schema URN prefix (kept apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrPath {
    pub urn: Option<String>,
    pub attr: String,
    pub sub: Option<String>,
}

/// A PATCH path: an attribute, optionally filtered (`members[value eq "x"]`) and then a
/// sub-attribute (`emails[type eq "work"].value`).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    pub sub: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

const MAX_FILTER: usize = 2048;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
}

fn tokens(s: &str) -> Result<Vec<Tok>, ParseError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Tok::LParen);
            }
            ')' => {
                chars.next();
                out.push(Tok::RParen);
            }
            '[' => {
                chars.next();
                out.push(Tok::LBracket);
            }
            ']' => {
                chars.next();
                out.push(Tok::RBracket);
            }
            '"' => {
                chars.next();
                let mut raw = String::from('"');
                let mut closed = false;
                while let Some(c) = chars.next() {
                    raw.push(c);
                    if c == '\\' {
                        if let Some(n) = chars.next() {
                            raw.push(n);
                        }
                    } else if c == '"' {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(ParseError("an unterminated string".into()));
                }
                // A JSON string (RFC 7644 3.4.2.2: compValue is a JSON string).
                let v: String = serde_json::from_str(&raw).map_err(|_| ParseError("a bad string".into()))?;
                out.push(Tok::Str(v));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "()[]\"".contains(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    /// Parentheses and brackets open now: bounded, so a filter cannot exhaust the stack.
    depth: usize,
}

const MAX_DEPTH: usize = 32;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k))
    }

    fn or(&mut self) -> Result<Filter, ParseError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, ParseError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, ParseError> {
        if self.keyword("not") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.group()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            return self.group();
        }
        self.attr_expr()
    }

    fn group(&mut self) -> Result<Filter, ParseError> {
        if self.next() != Some(Tok::LParen) {
            return Err(ParseError("expected '('".into()));
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError("the filter is nested too deep".into()));
        }
        let f = self.or()?;
        self.depth -= 1;
        if self.next() != Some(Tok::RParen) {
            return Err(ParseError("expected ')'".into()));
        }
        Ok(f)
    }

    fn attr_expr(&mut self) -> Result<Filter, ParseError> {
        let Some(Tok::Word(w)) = self.next() else { return Err(ParseError("expected an attribute".into())) };
        let path = attr_path(&w)?;
        if self.peek() == Some(&Tok::LBracket) {
            self.at += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(ParseError("the filter is nested too deep".into()));
            }
            let inner = self.or()?;
            self.depth -= 1;
            if self.next() != Some(Tok::RBracket) {
                return Err(ParseError("expected ']'".into()));
            }
            return Ok(Filter::ValuePath(path, Box::new(inner)));
        }
        let Some(Tok::Word(op)) = self.next() else { return Err(ParseError("expected an operator".into())) };
        let op = match op.to_ascii_lowercase().as_str() {
            "pr" => return Ok(Filter::Present(path)),
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            other => return Err(ParseError(format!("unknown operator {other:?}"))),
        };
        let value = match self.next() {
            Some(Tok::Str(s)) => Value::String(s),
            Some(Tok::Word(w)) => match w.to_ascii_lowercase().as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                _ => serde_json::from_str::<serde_json::Number>(&w)
                    .map(Value::Number)
                    .map_err(|_| ParseError(format!("a bad value {w:?}")))?,
            },
            _ => return Err(ParseError("expected a value".into())),
        };
        Ok(Filter::Compare(path, op, value))
    }
}

/// `urn:...:User:name.givenName` → urn, `name`, `givenName`.
pub fn attr_path(raw: &str) -> Result<AttrPath, ParseError> {
    let (urn, rest) = match raw.rfind(':') {
        Some(i) if raw[..i].to_ascii_lowercase().starts_with("urn:") => (Some(raw[..i].to_owned()), &raw[i + 1..]),
        _ => (None, raw),
    };
    let (attr, sub) = match rest.split_once('.') {
        Some((a, s)) => (a, Some(s.to_owned())),
        None => (rest, None),
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
    };
    if !ok(attr) || sub.as_deref().is_some_and(|s| !ok(s)) {
        return Err(ParseError(format!("a bad attribute path {raw:?}")));
    }
    Ok(AttrPath { urn, attr: attr.to_owned(), sub })
}

pub fn parse(filter: &str) -> Result<Filter, ParseError> {
    if filter.len() > MAX_FILTER || filter.contains('\0') {
        return Err(ParseError("the filter is too long".into()));
    }
    let mut p = Parser { toks: tokens(filter)?, at: 0, depth: 0 };
    let f = p.or()?;
    if p.at != p.toks.len() {
        return Err(ParseError("unexpected text after the filter".into()));
    }
    Ok(f)
}

/// `members[value eq "2819c223"]`, `emails[type eq "work"].value`, `name.familyName`,
/// `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`.
pub fn parse_patch_path(raw: &str) -> Result<PatchPath, ParseError> {
    if raw.len() > MAX_FILTER || raw.contains('\0') {
        return Err(ParseError("the path is too long".into()));
    }
    if let Some(open) = raw.find('[') {
        let close = raw.rfind(']').ok_or_else(|| ParseError("expected ']'".into()))?;
        if close < open {
            return Err(ParseError("expected ']'".into()));
        }
        let attr = attr_path(&raw[..open])?;
        let filter = parse(&raw[open + 1..close])?;
        let sub = match &raw[close + 1..] {
            "" => None,
            s if s.starts_with('.') && s.len() > 1 => Some(s[1..].to_owned()),
            _ => return Err(ParseError(format!("a bad path {raw:?}"))),
        };
        return Ok(PatchPath { attr, filter: Some(filter), sub });
    }
    let attr = attr_path(raw)?;
    let sub = attr.sub.clone();
    Ok(PatchPath { attr: AttrPath { sub: None, ..attr }, filter: None, sub })
}

/// A key of `obj` equal to `name` without case.
pub fn key_of<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a String> {
    obj.keys().find(|k| k.eq_ignore_ascii_case(name))
}

fn get<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    let o = obj.as_object()?;
    key_of(o, name).and_then(|k| o.get(k))
}

/// The value an attribute path points at in a resource (the extension's object when a URN
/// names one).
pub fn resolve<'a>(resource: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    let base = match &path.urn {
        Some(urn) if !is_core(urn) => get(resource, urn)?,
        _ => resource,
    };
    let v = get(base, &path.attr)?;
    match &path.sub {
        None => Some(v),
        Some(s) => match v {
            Value::Array(_) => Some(v),
            _ => get(v, s),
        },
    }
}

pub fn is_core(urn: &str) -> bool {
    urn.eq_ignore_ascii_case("urn:ietf:params:scim:schemas:core:2.0:User")
        || urn.eq_ignore_ascii_case("urn:ietf:params:scim:schemas:core:2.0:Group")
}

fn case_exact(path: &AttrPath) -> bool {
    path.attr.eq_ignore_ascii_case("id") || path.attr.eq_ignore_ascii_case("externalId")
}

fn compare(actual: &Value, op: Op, expected: &Value, exact: bool) -> bool {
    match (actual, expected) {
        (Value::String(a), Value::String(e)) => {
            let (a, e) = if exact { (a.clone(), e.clone()) } else { (a.to_lowercase(), e.to_lowercase()) };
            match op {
                Op::Eq => a == e,
                Op::Ne => a != e,
                Op::Co => a.contains(&e),
                Op::Sw => a.starts_with(&e),
                Op::Ew => a.ends_with(&e),
                Op::Gt => a > e,
                Op::Ge => a >= e,
                Op::Lt => a < e,
                Op::Le => a <= e,
            }
        }
        (Value::Bool(a), Value::Bool(e)) => match op {
            Op::Eq => a == e,
            Op::Ne => a != e,
            _ => false,
        },
        // Providers send booleans as strings ("True"); compare them as booleans.
        (Value::Bool(a), Value::String(e)) | (Value::String(e), Value::Bool(a)) => {
            match e.to_ascii_lowercase().as_str() {
                "true" | "false" => compare(&Value::Bool(*a), op, &Value::Bool(e.eq_ignore_ascii_case("true")), true),
                _ => false,
            }
        }
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().unwrap_or(f64::NAN), e.as_f64().unwrap_or(f64::NAN));
            match op {
                Op::Eq => a == e,
                Op::Ne => a != e,
                Op::Gt => a > e,
                Op::Ge => a >= e,
                Op::Lt => a < e,
                Op::Le => a <= e,
                _ => false,
            }
        }
        (_, Value::Null) => match op {
            Op::Eq => actual.is_null(),
            Op::Ne => !actual.is_null(),
            _ => false,
        },
        _ => op == Op::Ne,
    }
}

/// Whether the resource matches.
pub fn matches(resource: &Value, f: &Filter) -> bool {
    match f {
        Filter::Or(a, b) => matches(resource, a) || matches(resource, b),
        Filter::And(a, b) => matches(resource, a) && matches(resource, b),
        Filter::Not(a) => !matches(resource, a),
        Filter::Present(p) => values_at(resource, p).iter().any(|v| match v {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        }),
        Filter::Compare(p, op, expected) => {
            let values = values_at(resource, p);
            if values.is_empty() {
                return *op == Op::Ne && !expected.is_null();
            }
            let exact = case_exact(p);
            if *op == Op::Ne {
                values.iter().all(|v| compare(v, Op::Ne, expected, exact))
            } else {
                values.iter().any(|v| compare(v, *op, expected, exact))
            }
        }
        Filter::ValuePath(p, inner) => match resolve(resource, &AttrPath { sub: None, ..p.clone() }) {
            Some(Value::Array(items)) => items.iter().any(|i| matches(i, inner)),
            Some(v @ Value::Object(_)) => matches(v, inner),
            _ => false,
        },
    }
}

/// Every value an attribute path reaches: `emails.value` is each email's value; `members`
/// with no sub-attribute compares each member's `value`.
fn values_at<'a>(resource: &'a Value, p: &AttrPath) -> Vec<&'a Value> {
    let base = resolve(resource, &AttrPath { sub: None, ..p.clone() });
    match (base, &p.sub) {
        (None, _) => Vec::new(),
        (Some(Value::Array(items)), Some(sub)) => items.iter().filter_map(|i| get(i, sub)).collect(),
        (Some(Value::Array(items)), None) => {
            items.iter().map(|i| if i.is_object() { get(i, "value").unwrap_or(i) } else { i }).collect()
        }
        (Some(v), Some(sub)) => get(v, sub).into_iter().collect(),
        (Some(v), None) => vec![v],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use serde_json::json;

    use super::*;

    fn user() -> Value {
        json!({
            "userName": "Alice@Initech.test", "externalId": "00u1", "displayName": "Alice L",
            "name": {"givenName": "Alice", "familyName": "Liddell"}, "active": true,
            "emails": [{"value": "alice@initech.test", "type": "work", "primary": true},
                       {"value": "al@home.test", "type": "home"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"},
            "members": [{"value": "m1"}, {"value": "m2"}],
        })
    }

    #[test]
    fn the_operators_of_rfc_7644() {
        let u = user();
        for (f, want) in [
            (r#"userName eq "alice@initech.test""#, true),
            (r#"USERNAME Eq "ALICE@INITECH.TEST""#, true),
            (r#"externalId eq "00U1""#, false),
            (r#"externalId eq "00u1""#, true),
            (r#"userName ne "bob@initech.test""#, true),
            (r#"displayName co "ice""#, true),
            (r#"displayName sw "ali""#, true),
            (r#"emails.value eq "al@home.test""#, true),
            (r#"emails[type eq "work" and value co "initech"]"#, true),
            (r#"emails[type eq "other"]"#, false),
            ("title pr", false),
            ("name.familyName pr", true),
            (r#"members.value eq "m2""#, true),
            (r#"members eq "m1""#, true),
            (r#"userName eq "x" or (active eq true and not (displayName eq "Bob"))"#, true),
            (r#"active eq "True""#, true),
            (r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "r&d""#, true),
        ] {
            assert_eq!(matches(&u, &parse(f).unwrap()), want, "{f}");
        }
    }

    #[test]
    fn bad_filters_are_errors() {
        // Deep nesting is refused before it can use up the stack.
        for n in [40, 1000, 5000] {
            let deep = format!("{}userName eq \"x\"{}", "(".repeat(n), ")".repeat(n));
            assert!(parse(&deep).is_err(), "{n}");
        }
        let nested = format!("{}userName eq \"x\"{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(parse(&nested), Err(ParseError("the filter is nested too deep".into())));
        assert!(parse(r#"not (userName eq "x")"#).is_ok());
        for f in [
            "",
            "userName",
            r#"userName zz "x""#,
            r#"userName eq "x" extra"#,
            r#"(userName eq "x""#,
            "a eq \"unterminated",
        ] {
            assert!(parse(f).is_err(), "{f}");
        }
    }

    #[test]
    fn patch_paths() {
        let p = parse_patch_path(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(p.attr.attr, "emails");
        assert_eq!(p.sub.as_deref(), Some("value"));
        assert!(p.filter.is_some());
        let p = parse_patch_path("name.familyName").unwrap();
        assert_eq!((p.attr.attr.as_str(), p.sub.as_deref()), ("name", Some("familyName")));
        let p = parse_patch_path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department").unwrap();
        assert_eq!(p.attr.urn.as_deref(), Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"));
        assert!(parse_patch_path("members[value eq").is_err());
    }
}
