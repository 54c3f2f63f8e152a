//! Label selectors (`a=b,c!=d,e in (x,y),f notin (z),g,!h`) and field
//! selectors (`metadata.name=x`, any dotted path, with `=`, `==` or `!=`), as
//! they arrive in a list or watch query, and matching them against objects.

use serde_json::{Map, Value};

use crate::status::ApiError;

/// A parsed `labelSelector` and `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldReq {
    path: Vec<String>,
    value: String,
    equal: bool,
}

impl Selector {
    /// Parses the two query parameters; either may be absent.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, ApiError> {
        let labels = match labels {
            Some(s) => split_terms(s).into_iter().map(parse_label_term).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let fields = match fields {
            Some(s) => s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(parse_field_term).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Selector { labels, fields })
    }

    /// Does `obj` match every requirement?
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.labels.iter().all(|r| r.matches(labels)) && self.fields.iter().all(|r| r.matches(obj))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn parse_label_term(term: &str) -> Result<LabelReq, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("unable to parse requirement \"{term}\": {why}"));
    if let Some((head, rest)) = term.split_once('(') {
        let inner = rest.strip_suffix(')').ok_or_else(|| bad("missing closing ')'"))?;
        let mut words = head.split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad("expected `key in (values)` or `key notin (values)`"));
        };
        let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        if let Some(v) = values.iter().find(|v| !valid_value(v)) {
            return Err(bad(&format!("invalid value {v:?}")));
        }
        let key = checked_key(key).ok_or_else(|| bad("invalid key"))?;
        return match op {
            "in" => Ok(LabelReq::In(key, values)),
            "notin" => Ok(LabelReq::NotIn(key, values)),
            _ => Err(bad(&format!("unknown operator {op:?}"))),
        };
    }
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(checked_key(key.trim()).ok_or_else(|| bad("invalid key"))?));
    }
    let Some((key, value, equal)) = split_comparison(term) else {
        return Ok(LabelReq::Exists(checked_key(term).ok_or_else(|| bad("invalid key"))?));
    };
    let key = checked_key(key.trim()).ok_or_else(|| bad("invalid key"))?;
    let value = value.trim();
    if !valid_value(value) {
        return Err(bad(&format!("invalid value {value:?}")));
    }
    Ok(if equal { LabelReq::Eq(key, value.to_string()) } else { LabelReq::NotEq(key, value.to_string()) })
}

/// `a!=b`, `a==b` or `a=b` as (left, right, whether equal), else `None`.
fn split_comparison(term: &str) -> Option<(&str, &str, bool)> {
    if let Some((k, v)) = term.split_once("!=") {
        Some((k, v, false))
    } else if let Some((k, v)) = term.split_once("==") {
        Some((k, v, true))
    } else {
        term.split_once('=').map(|(k, v)| (k, v, true))
    }
}

fn parse_field_term(term: &str) -> Result<FieldReq, ApiError> {
    let Some((path, value, equal)) = split_comparison(term) else {
        return Err(ApiError::BadRequest(format!("invalid field selector {term:?}: expected `field=value`")));
    };
    let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(ApiError::BadRequest(format!("invalid field selector {term:?}: empty path segment")));
    }
    Ok(FieldReq { path, value: value.trim().to_string(), equal })
}

fn checked_key(key: &str) -> Option<String> {
    let ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    ok.then(|| key.to_string())
}

fn valid_value(v: &str) -> bool {
    v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

// === impl LabelReq ===

impl LabelReq {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        match self {
            LabelReq::Eq(k, v) => get(k) == Some(v),
            LabelReq::NotEq(k, v) => get(k) != Some(v),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        }
    }
}

// === impl FieldReq ===

impl FieldReq {
    fn matches(&self, obj: &Value) -> bool {
        let found = self.path.iter().try_fold(obj, |v, seg| v.get(seg));
        let actual = match found {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        (actual == self.value) == self.equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    fn sel(l: &str) -> Selector {
        Selector::parse(Some(l), None).unwrap()
    }

    #[test]
    fn label_operators() {
        let p = pod(json!({"app": "web", "tier": "front"}));
        for (s, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (db, web)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("missing notin (db)", true),
            ("app notin (web,db)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier in (front,back),!canary", true),
            ("app=web,tier=back", false),
            ("kubernetes.io/service-name=foo", false),
            ("", true),
        ] {
            assert_eq!(sel(s).matches(&p), want, "{s}");
        }
        assert!(!sel("app").matches(&json!({"metadata": {"name": "x"}})));
    }

    #[test]
    fn field_selectors() {
        let p = pod(json!({}));
        let f = |s: &str| Selector::parse(None, Some(s)).unwrap().matches(&p);
        assert!(f("metadata.name=p"));
        assert!(f("metadata.name==p,metadata.namespace=ns"));
        assert!(!f("metadata.name=q"));
        assert!(f("metadata.name!=q"));
        assert!(f("spec.nodeName=n1"));
        assert!(f("status.phase="));
    }

    #[test]
    fn bad_selectors_are_400() {
        for s in ["app in (a", "app foo (a)", "a b=c", "app=we b", "=x", "in (a)"] {
            let e = Selector::parse(Some(s), None).unwrap_err();
            assert_eq!(e.code(), 400, "{s}");
        }
        assert_eq!(Selector::parse(None, Some("metadata.name")).unwrap_err().code(), 400);
    }
}
