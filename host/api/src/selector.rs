//! Label and field selectors with Kubernetes' syntax and semantics.
//!
//! Label selectors: `key`, `!key`, `key=value`, `key==value`, `key!=value`,
//! `key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`, joined by commas; `!=` and `notin` also
//! match objects without the label, as in Kubernetes. The structured form of workload objects
//! (`matchLabels` / `matchExpressions`) converts to the same type.
//!
//! Field selectors: `field=value`, `field==value`, `field!=value`, joined by commas, with `\,`,
//! `\=` and `\\` escapes in values. Which fields exist is the caller's business (each kind
//! supports its own set); this module only parses and matches.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::validation;

/// A selector that did not parse or validate. The message says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Exists(String),
    DoesNotExist(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::Exists(k)
            | Requirement::DoesNotExist(k)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::GreaterThan(k, _)
            | Requirement::LessThan(k, _) => k,
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(self.key());
        match self {
            Requirement::Exists(_) => value.is_some(),
            Requirement::DoesNotExist(_) => value.is_none(),
            Requirement::In(_, values) => value.is_some_and(|v| values.contains(v)),
            Requirement::NotIn(_, values) => value.is_none_or(|v| !values.contains(v)),
            Requirement::GreaterThan(_, n) => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::LessThan(_, n) => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        }
    }
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Converts the structured `metav1.LabelSelector` of workload objects. `null` or `{}` select
    /// everything, as in Kubernetes.
    pub fn from_json(selector: &serde_json::Value) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if selector.is_null() {
            return Ok(Self::default());
        }
        if let Some(labels) = selector.get("matchLabels").and_then(|m| m.as_object()) {
            for (key, value) in labels {
                let value = value.as_str().ok_or_else(|| {
                    SelectorError(format!("matchLabels[{key}]: must be a string"))
                })?;
                check_key(key)?;
                check_value(value)?;
                requirements.push(Requirement::In(key.clone(), vec![value.to_owned()]));
            }
        }
        if let Some(expressions) = selector.get("matchExpressions").and_then(|m| m.as_array()) {
            for (i, expression) in expressions.iter().enumerate() {
                let field = |name: &str| expression.get(name).and_then(|v| v.as_str());
                let key = field("key")
                    .ok_or_else(|| {
                        SelectorError(format!("matchExpressions[{i}].key: Required value"))
                    })?
                    .to_owned();
                check_key(&key)?;
                let values: Vec<String> = expression
                    .get("values")
                    .and_then(|v| v.as_array())
                    .map(|values| {
                        values
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let operator = field("operator").unwrap_or_default();
                let requirement = match operator {
                    "In" | "NotIn" if values.is_empty() => {
                        return Err(SelectorError(format!(
                            "matchExpressions[{i}].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                        )));
                    }
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" | "DoesNotExist" if !values.is_empty() => {
                        return Err(SelectorError(format!(
                            "matchExpressions[{i}].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                        )));
                    }
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    other => {
                        return Err(SelectorError(format!(
                            "matchExpressions[{i}].operator: Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                        )));
                    }
                };
                requirements.push(requirement);
            }
        }
        Ok(Self { requirements })
    }
}

fn check_key(key: &str) -> Result<(), SelectorError> {
    let errors = validation::qualified_name(key);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "invalid label key {key:?}: {}",
            errors.join("; ")
        )))
    }
}

fn check_value(value: &str) -> Result<(), SelectorError> {
    let errors = validation::label_value(value);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "invalid label value: {value:?}: {}",
            errors.join("; ")
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    Greater,
    Less,
}

fn tokenize(input: &str) -> Result<Vec<Token>, SelectorError> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' | '>' | '<' => {
                chars.next();
                tokens.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ',' => Token::Comma,
                    '>' => Token::Greater,
                    _ => Token::Less,
                });
            }
            '=' | '!' => {
                chars.next();
                let doubled = chars.peek().is_some_and(|&(_, n)| n == '=');
                if doubled {
                    chars.next();
                }
                tokens.push(match (c, doubled) {
                    ('=', false) => Token::Equals,
                    ('=', true) => Token::DoubleEquals,
                    ('!', true) => Token::NotEquals,
                    _ => Token::Not,
                });
            }
            _ => {
                let mut end = at;
                while let Some(&(i, c)) = chars.peek() {
                    if c.is_whitespace() || "(),><=!".contains(c) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                let word = &input[at..end];
                tokens.push(match word {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    _ => Token::Identifier(word.to_owned()),
                });
            }
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token>,
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> SelectorError {
        SelectorError(format!(
            "unable to parse label selector {:?}: {what}",
            self.input
        ))
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek() == Some(&Token::Not) {
            self.next();
            let key = self.key()?;
            return Ok(Requirement::DoesNotExist(key));
        }
        let key = self.key()?;
        match self.peek() {
            None | Some(Token::Comma) => Ok(Requirement::Exists(key)),
            Some(Token::Equals | Token::DoubleEquals) => {
                self.next();
                Ok(Requirement::In(key, vec![self.value()?]))
            }
            Some(Token::NotEquals) => {
                self.next();
                Ok(Requirement::NotIn(key, vec![self.value()?]))
            }
            Some(Token::In) => {
                self.next();
                Ok(Requirement::In(key, self.value_set()?))
            }
            Some(Token::NotIn) => {
                self.next();
                Ok(Requirement::NotIn(key, self.value_set()?))
            }
            Some(Token::Greater | Token::Less) => {
                let greater = self.next() == Some(Token::Greater);
                let value = self.value()?;
                let n = value.parse::<i64>().map_err(|_| {
                    self.error(&format!("for '>' and '<', the value must be an integer, got {value:?}"))
                })?;
                Ok(if greater {
                    Requirement::GreaterThan(key, n)
                } else {
                    Requirement::LessThan(key, n)
                })
            }
            Some(other) => Err(self.error(&format!(
                "found {other:?} after key {key:?}, expected one of '=', '==', '!=', 'in', 'notin', '>', '<' or ','"
            ))),
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            Some(Token::Identifier(key)) => {
                check_key(&key)?;
                Ok(key)
            }
            Some(other) => Err(self.error(&format!("found {other:?}, expected a label key"))),
            None => Err(self.error("found the end, expected a label key")),
        }
    }

    /// A value after `=`; empty when the requirement ends there (`key=`).
    fn value(&mut self) -> Result<String, SelectorError> {
        let value = match self.peek() {
            Some(Token::Identifier(value)) => {
                let value = value.clone();
                self.next();
                value
            }
            None | Some(Token::Comma) => String::new(),
            Some(other) => {
                return Err(self.error(&format!("found {other:?}, expected a label value")));
            }
        };
        check_value(&value)?;
        Ok(value)
    }

    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        if self.next() != Some(Token::Open) {
            return Err(self.error("expected '(' after 'in' or 'notin'"));
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Identifier(value)) => {
                    check_value(&value)?;
                    values.push(value);
                    match self.next() {
                        Some(Token::Comma) => continue,
                        Some(Token::Close) => break,
                        _ => return Err(self.error("expected ',' or ')' in a value set")),
                    }
                }
                // Empty values are allowed: `key in (,a)`, `key in ()` is not.
                Some(Token::Comma) => values.push(String::new()),
                Some(Token::Close) if !values.is_empty() => {
                    values.push(String::new());
                    break;
                }
                _ => return Err(self.error("expected a value in the set")),
            }
        }
        Ok(values)
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, SelectorError> {
        let tokens = tokenize(input)?;
        let mut parser = Parser {
            input,
            tokens,
            at: 0,
        };
        let mut requirements = Vec::new();
        while parser.peek().is_some() {
            requirements.push(parser.requirement()?);
            match parser.next() {
                None => break,
                Some(Token::Comma) if parser.peek().is_some() => {}
                Some(Token::Comma) => return Err(parser.error("found the end after ','")),
                Some(other) => {
                    return Err(parser.error(&format!("found {other:?}, expected ','")));
                }
            }
        }
        Ok(Self { requirements })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
                Requirement::In(k, v) if v.len() == 1 => write!(f, "{k}={}", v[0])?,
                Requirement::In(k, v) => write!(f, "{k} in ({})", v.join(","))?,
                Requirement::NotIn(k, v) if v.len() == 1 => write!(f, "{k}!={}", v[0])?,
                Requirement::NotIn(k, v) => write!(f, "{k} notin ({})", v.join(","))?,
                Requirement::GreaterThan(k, n) => write!(f, "{k}>{n}")?,
                Requirement::LessThan(k, n) => write!(f, "{k}<{n}")?,
            }
        }
        Ok(())
    }
}

/// One field requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub equals: bool,
    pub value: String,
}

/// A parsed field selector. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Matches an object whose field values `get` returns; a field the object lacks counts as
    /// the empty string.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.terms.iter().all(|term| {
            let value = get(&term.field).unwrap_or("");
            (value == term.value) == term.equals
        })
    }
}

/// Splits on `separator` where it is not escaped by a backslash.
fn split_unescaped(input: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in input.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == separator && !escaped => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
    }
    parts.push(&input[start..]);
    parts
}

fn unescape(value: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(escaped @ ('\\' | ',' | '=')) => out.push(escaped),
                Some(other) => {
                    return Err(SelectorError(format!(
                        "invalid field selector value {value:?}: invalid escape sequence \\{other}"
                    )));
                }
                None => {
                    return Err(SelectorError(format!(
                        "invalid field selector value {value:?}: unterminated escape"
                    )));
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

impl FromStr for FieldSelector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        if input.trim().is_empty() {
            return Ok(Self { terms });
        }
        for part in split_unescaped(input, ',') {
            // The first unescaped operator splits the term; "!=" and "==" before "=".
            let mut found = None;
            let bytes = part.as_bytes();
            let mut escaped = false;
            for (i, &b) in bytes.iter().enumerate() {
                if escaped {
                    escaped = false;
                    continue;
                }
                match b {
                    b'\\' => escaped = true,
                    b'!' if bytes.get(i + 1) == Some(&b'=') => {
                        found = Some((i, 2, false));
                        break;
                    }
                    b'=' if bytes.get(i + 1) == Some(&b'=') => {
                        found = Some((i, 2, true));
                        break;
                    }
                    b'=' => {
                        found = Some((i, 1, true));
                        break;
                    }
                    _ => {}
                }
            }
            let Some((at, width, equals)) = found else {
                return Err(SelectorError(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = part[..at].trim();
            if field.is_empty() {
                return Err(SelectorError(format!(
                    "invalid selector: '{part}': field name is empty"
                )));
            }
            terms.push(FieldTerm {
                field: field.to_owned(),
                equals,
                value: unescape(part[at + width..].trim())?,
            });
        }
        Ok(Self { terms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_match_as_kubernetes_does() {
        let object = labels(&[("app", "web"), ("tier", "front"), ("replicas", "3")]);
        let bare = labels(&[]);
        // (selector, matches `object`, matches an object without labels)
        let cases = [
            ("", true, true),
            ("app", true, false),
            ("!app", false, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app = web", true, false),
            ("app!=web", false, true),
            ("app!=db", true, true),
            ("app in (web,db)", true, false),
            ("app in (db)", false, false),
            ("app notin (db,cache)", true, true),
            ("app notin (web)", false, true),
            ("app=web,tier=front", true, false),
            ("app=web,tier=back", false, false),
            ("app=web, !missing", true, false),
            ("replicas>2", true, false),
            ("replicas<3", false, false),
            ("example.com/role", false, false),
            ("app=", false, false),
        ];
        for (input, on_object, on_bare) in cases {
            let selector: LabelSelector = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(selector.matches(&object), on_object, "{input:?} on object");
            assert_eq!(selector.matches(&bare), on_bare, "{input:?} on no labels");
        }
    }

    #[test]
    fn label_selectors_that_do_not_parse_say_why() {
        for input in [
            "app=web,",
            "app in web",
            "app in ()",
            "=web",
            "app=we b",
            "-app",
            "app=-x",
            "replicas>two",
            "app==web==x",
        ] {
            let err = input.parse::<LabelSelector>().unwrap_err();
            assert!(!err.to_string().is_empty(), "{input}");
        }
        let err = "app in web"
            .parse::<LabelSelector>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("'('"), "{err}");
    }

    #[test]
    fn label_selectors_print_back_in_their_own_syntax() {
        for input in [
            "app=web,!x,tier in (a,b),k notin (c,d),n>1,m<2,e,f!=g",
            "example.com/role=db",
            "",
        ] {
            let selector: LabelSelector = input.parse().unwrap();
            assert_eq!(selector.to_string(), input);
            assert_eq!(
                selector.to_string().parse::<LabelSelector>().unwrap(),
                selector
            );
        }
    }

    #[test]
    fn structured_selectors_convert() {
        let json = serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]
        });
        let selector = LabelSelector::from_json(&json).unwrap();
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "edge"), ("legacy", "")])));
        assert!(!selector.matches(&labels(&[("app", "web")])));
        assert!(
            LabelSelector::from_json(&serde_json::json!({}))
                .unwrap()
                .is_empty()
        );

        let bad = serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Near"}]});
        let err = LabelSelector::from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("Unsupported value"), "{err}");
        let bad = serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In"}]});
        assert!(LabelSelector::from_json(&bad).is_err());
    }

    #[test]
    fn field_selectors_parse_and_match() {
        let fields = |name: &str| match name {
            "metadata.name" => Some("web-1"),
            "spec.nodeName" => Some("node-a"),
            "status.phase" => Some("Running"),
            "involvedObject.name" => Some("a,b=c"),
            _ => None,
        };
        let cases = [
            ("", true),
            ("metadata.name=web-1", true),
            ("metadata.name==web-1", true),
            ("metadata.name!=web-1", false),
            ("spec.nodeName=node-a,status.phase!=Failed", true),
            ("spec.nodeName=", false),
            ("spec.unknown=", true),
            ("status.phase!=Running", false),
            (r"involvedObject.name=a\,b\=c", true),
        ];
        for (input, expected) in cases {
            let selector: FieldSelector = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(selector.matches(fields), expected, "{input:?}");
        }
        let selector: FieldSelector = "a=1,b!=2".parse().unwrap();
        assert_eq!(
            selector.terms(),
            [
                FieldTerm {
                    field: "a".into(),
                    equals: true,
                    value: "1".into()
                },
                FieldTerm {
                    field: "b".into(),
                    equals: false,
                    value: "2".into()
                },
            ]
        );
        for bad in ["metadata.name", "=x", r"a=b\q"] {
            assert!(bad.parse::<FieldSelector>().is_err(), "{bad}");
        }
    }
}
