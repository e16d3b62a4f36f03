//! The sync scope of a connection: rules over CRM fields that decide which
//! leads and contacts sync at all (issue 28, like Account Engagement's
//! Marketing Data Sharing rules, with more than one field and operator).
//!
//! Every condition must hold (AND). No condition means everything syncs, which
//! is also what a connection stored before the scope existed reads as. A CRM
//! record out of scope is, for the sync, as if deleted: its prospect goes to
//! the MA recycle bin (R8's path), and it comes back when the record enters
//! the scope again. Keeping that one path means scope needs no state of its
//! own: whether a record is in scope is a pure function of the record.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::CrmObject;
use crate::merge::is_blank;
use crate::records::{CrmPersonRecord, SourceRecord};

/// How a condition compares a field with its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// The field equals the one value (text case-insensitively, trimmed).
    Equals,
    /// The field does not equal the one value (a blank field differs from
    /// any value).
    NotEquals,
    /// The field equals one of the values.
    In,
    /// The field is blank (missing, null or only spaces); takes no value.
    IsBlank,
    /// The field's text contains the one value, case-insensitively.
    Contains,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "equals",
            Operator::NotEquals => "not_equals",
            Operator::In => "in",
            Operator::IsBlank => "is_blank",
            Operator::Contains => "contains",
        }
    }

    /// Parses the operator as the CLI and the console take it.
    pub fn parse(s: &str) -> Option<Operator> {
        Some(match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "equals" | "eq" | "=" => Operator::Equals,
            "not_equals" | "ne" | "!=" => Operator::NotEquals,
            "in" => Operator::In,
            "is_blank" | "blank" => Operator::IsBlank,
            "contains" => Operator::Contains,
            _ => return None,
        })
    }

    pub const ALL: [Operator; 5] = [Operator::Equals, Operator::NotEquals, Operator::In, Operator::IsBlank, Operator::Contains];
}

/// One condition over a CRM field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The CRM field as the API spells it (`Status`, `LeadSource`...).
    pub field: String,
    pub op: Operator,
    /// The values compared with: one for `equals`, `not_equals` and
    /// `contains`, one or more for `in`, none for `is_blank`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Only records of this object are judged by the condition (a lead's
    /// `Status` means nothing on a contact); `None`: leads and contacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<CrmObject>,
}

/// Why a scope cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("condition {0}: the field name is empty")]
    NoField(usize),
    #[error("condition {n} on {field}: {op} takes exactly one value, got {got}")]
    OneValue { n: usize, field: String, op: &'static str, got: usize },
    #[error("condition {n} on {field}: in takes at least one value")]
    NoValues { n: usize, field: String },
    #[error("condition {n} on {field}: is_blank takes no value")]
    NoValueWanted { n: usize, field: String },
    #[error("condition {n} on {field}: a scope rule applies to leads or contacts, not {object}")]
    NotAPerson { n: usize, field: String, object: CrmObject },
}

/// The text of a field value as conditions compare it.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_lowercase(),
        Value::Null => String::new(),
        other => other.to_string().to_lowercase(),
    }
}

impl Condition {
    /// Whether `value` (the record's value of the field, `None`: absent)
    /// satisfies the condition.
    pub fn holds_for(&self, value: Option<&Value>) -> bool {
        let blank = value.is_none_or(is_blank);
        let text = value.map(text_of).unwrap_or_default();
        let wanted = |w: &String| w.trim().to_lowercase();
        match self.op {
            Operator::IsBlank => blank,
            Operator::Equals => !blank && self.values.first().is_some_and(|w| wanted(w) == text),
            Operator::NotEquals => blank || self.values.first().is_none_or(|w| wanted(w) != text),
            Operator::In => !blank && self.values.iter().any(|w| wanted(w) == text),
            Operator::Contains => !blank && self.values.first().is_some_and(|w| text.contains(&wanted(w))),
        }
    }

    fn validate(&self, n: usize) -> Result<(), ScopeError> {
        let field = self.field.clone();
        if self.field.trim().is_empty() {
            return Err(ScopeError::NoField(n));
        }
        if let Some(object) = self.object.filter(|o| !matches!(o, CrmObject::Lead | CrmObject::Contact)) {
            return Err(ScopeError::NotAPerson { n, field, object });
        }
        let got = self.values.len();
        match self.op {
            Operator::IsBlank if got > 0 => Err(ScopeError::NoValueWanted { n, field }),
            Operator::In if got == 0 => Err(ScopeError::NoValues { n, field }),
            Operator::Equals | Operator::NotEquals | Operator::Contains if got != 1 => {
                Err(ScopeError::OneValue { n, field, op: self.op.as_str(), got })
            }
            _ => Ok(()),
        }
    }

    /// Parses a rule as the command line and the console's form write it:
    /// `[lead.|contact.]Field:operator[:value[,value...]]`
    /// (`lead.Status:in:Open,Working`, `LeadSource:is_blank`). Only `in`
    /// splits its values on commas.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let mut parts = text.splitn(3, ':');
        let target = parts.next().unwrap_or_default().trim();
        let op_text = parts.next().ok_or_else(|| format!("{text:?}: expected Field:operator[:value]"))?;
        let op = Operator::parse(op_text).ok_or_else(|| {
            let ops: Vec<&str> = Operator::ALL.iter().map(|o| o.as_str()).collect();
            format!("{text:?}: unknown operator {op_text:?}; one of {}", ops.join(", "))
        })?;
        let (object, field) = match target.split_once('.') {
            Some(("lead", f)) => (Some(CrmObject::Lead), f),
            Some(("contact", f)) => (Some(CrmObject::Contact), f),
            _ => (None, target),
        };
        let values = match (parts.next(), op) {
            (None, _) => Vec::new(),
            (Some(v), Operator::In) => v.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect(),
            (Some(v), _) => vec![v.to_owned()],
        };
        let c = Condition { field: field.trim().to_owned(), op, values, object };
        c.validate(1).map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// The condition as [`Condition::parse`] reads it.
    pub fn to_rule(&self) -> String {
        let object = self.object.map(|o| format!("{o}.")).unwrap_or_default();
        let values = if self.values.is_empty() { String::new() } else { format!(":{}", self.values.join(",")) };
        format!("{object}{}:{}{values}", self.field, self.op.as_str())
    }

    /// The condition as one line (`Status equals "Open"`).
    pub fn describe(&self) -> String {
        let on = self.object.map(|o| format!(" (on {o}s)")).unwrap_or_default();
        let values = match self.op {
            Operator::IsBlank => String::new(),
            Operator::In => format!(" [{}]", self.values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")),
            _ => format!(" {:?}", self.values.first().cloned().unwrap_or_default()),
        };
        format!("{} {}{values}{on}", self.field, self.op.as_str())
    }
}

/// The rules deciding which CRM records sync; empty: every record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SyncScope {
    pub conditions: Vec<Condition>,
}

impl SyncScope {
    pub fn new(conditions: Vec<Condition>) -> Result<Self, ScopeError> {
        let scope = SyncScope { conditions };
        scope.validate()?;
        Ok(scope)
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    pub fn validate(&self) -> Result<(), ScopeError> {
        self.conditions.iter().enumerate().try_for_each(|(i, c)| c.validate(i + 1))
    }

    /// Whether a lead or contact holding `get(field)` is in scope: every
    /// condition that applies to `object` holds.
    pub fn includes(&self, object: CrmObject, get: impl Fn(&str) -> Option<Value>) -> bool {
        self.conditions.iter().filter(|c| c.object.is_none_or(|o| o == object)).all(|c| c.holds_for(get(&c.field).as_ref()))
    }

    /// Whether a CRM person record is in scope.
    pub fn includes_record(&self, r: &CrmPersonRecord) -> bool {
        self.includes(r.object, |field| {
            r.fields.get(field).map(|f| f.value.clone()).or_else(|| match field {
                // Attributes a record carries outside `fields`.
                "Email" => r.email.clone().map(Value::from),
                "OwnerId" => r.owner_id.clone().map(Value::from),
                _ => None,
            })
        })
    }

    /// Marks a CRM person record out of scope as deleted, which is what
    /// leaving the scope means for the sync (its prospect is recycled);
    /// other records pass unchanged. True if it was marked.
    pub fn apply(&self, record: &mut SourceRecord) -> bool {
        match record {
            SourceRecord::Crm(r) if !self.is_empty() && !r.is_deleted && !self.includes_record(r) => {
                r.is_deleted = true;
                true
            }
            _ => false,
        }
    }

    /// The CRM fields the scope reads on `object` (a real API's connector
    /// must read them too).
    pub fn fields_for(&self, object: CrmObject) -> impl Iterator<Item = &str> {
        self.conditions.iter().filter(move |c| c.object.is_none_or(|o| o == object)).map(|c| c.field.as_str())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn cond(field: &str, op: Operator, values: &[&str]) -> Condition {
        Condition { field: field.into(), op, values: values.iter().map(|v| (*v).to_owned()).collect(), object: None }
    }

    fn lead(pairs: &[(&str, Value)]) -> impl Fn(&str) -> Option<Value> + use<> {
        let map: std::collections::HashMap<String, Value> = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        move |f| map.get(f).cloned()
    }

    #[test]
    fn no_rule_means_every_record_syncs() {
        assert!(SyncScope::default().includes(CrmObject::Lead, |_| None));
        let s: crate::settings::ConnectionSettings = serde_json::from_str("{}").unwrap();
        assert!(s.sync_scope.is_empty(), "settings stored before the scope existed");
    }

    #[test]
    fn each_operator_judges_as_documented() {
        let get = lead(&[("Status", json!("Open - Not Contacted")), ("LeadSource", json!(" Web ")), ("Rating", Value::Null)]);
        let yes = |c: Condition| assert!(SyncScope::new(vec![c.clone()]).unwrap().includes(CrmObject::Lead, &get), "{}", c.describe());
        let no = |c: Condition| assert!(!SyncScope::new(vec![c.clone()]).unwrap().includes(CrmObject::Lead, &get), "{}", c.describe());
        yes(cond("LeadSource", Operator::Equals, &["web"]));
        no(cond("LeadSource", Operator::Equals, &["Phone"]));
        no(cond("Rating", Operator::Equals, &[""]));
        yes(cond("LeadSource", Operator::NotEquals, &["Phone"]));
        yes(cond("Rating", Operator::NotEquals, &["Hot"]));
        no(cond("LeadSource", Operator::NotEquals, &["WEB"]));
        yes(cond("LeadSource", Operator::In, &["Phone", "Web"]));
        no(cond("Rating", Operator::In, &["Hot", "Warm"]));
        yes(cond("Rating", Operator::IsBlank, &[]));
        yes(cond("Missing", Operator::IsBlank, &[]));
        no(cond("Status", Operator::IsBlank, &[]));
        yes(cond("Status", Operator::Contains, &["not contacted"]));
        no(cond("Rating", Operator::Contains, &["h"]));
    }

    #[test]
    fn all_conditions_must_hold_and_object_bound_ones_judge_only_their_object() {
        let get = lead(&[("Status", json!("Open")), ("LeadSource", json!("Web"))]);
        let mut status = cond("Status", Operator::Equals, &["Open"]);
        status.object = Some(CrmObject::Lead);
        let scope = SyncScope::new(vec![status, cond("LeadSource", Operator::Equals, &["Phone"])]).unwrap();
        assert!(!scope.includes(CrmObject::Lead, &get), "one of two fails");
        let mut closed = cond("Status", Operator::Equals, &["Closed"]);
        closed.object = Some(CrmObject::Lead);
        let scope = SyncScope::new(vec![closed]).unwrap();
        assert!(!scope.includes(CrmObject::Lead, &get));
        assert!(scope.includes(CrmObject::Contact, &get), "a lead's rule says nothing of contacts");
    }

    #[test]
    fn malformed_rules_are_refused_with_what_is_wrong() {
        let e = SyncScope::new(vec![cond("Status", Operator::Equals, &[])]).unwrap_err();
        assert!(e.to_string().contains("exactly one value"), "{e}");
        assert!(matches!(SyncScope::new(vec![cond("Status", Operator::In, &[])]), Err(ScopeError::NoValues { .. })));
        assert!(matches!(SyncScope::new(vec![cond("Status", Operator::IsBlank, &["x"])]), Err(ScopeError::NoValueWanted { .. })));
        assert!(matches!(SyncScope::new(vec![cond(" ", Operator::IsBlank, &[])]), Err(ScopeError::NoField(1))));
        let mut c = cond("Name", Operator::IsBlank, &[]);
        c.object = Some(CrmObject::Account);
        assert!(matches!(SyncScope::new(vec![c]), Err(ScopeError::NotAPerson { .. })));
    }

    #[test]
    fn an_out_of_scope_record_is_marked_deleted_and_an_in_scope_one_is_not() {
        let at = chrono::Utc::now();
        let mut fields = crate::records::Fields::new();
        fields.insert("Status".into(), crate::records::FieldValue::new(json!("Closed")));
        let scope = SyncScope::new(vec![cond("Status", Operator::NotEquals, &["Closed"])]).unwrap();
        let mut r = SourceRecord::Crm(CrmPersonRecord::test_lead("00Q000000000001AAA", at, fields.clone()));
        assert!(scope.apply(&mut r));
        assert!(matches!(&r, SourceRecord::Crm(c) if c.is_deleted));
        fields.insert("Status".into(), crate::records::FieldValue::new(json!("Open")));
        let mut r = SourceRecord::Crm(CrmPersonRecord::test_lead("00Q000000000001AAA", at, fields));
        assert!(!scope.apply(&mut r));
        assert!(matches!(&r, SourceRecord::Crm(c) if !c.is_deleted));
    }

    #[test]
    fn rules_are_parsed_as_written_and_printed_back_the_same() {
        let c = Condition::parse("lead.Status:in:Open, Working").unwrap();
        assert_eq!(
            (c.object, c.field.as_str(), c.op, c.values.clone()),
            (Some(CrmObject::Lead), "Status", Operator::In, vec!["Open".into(), "Working".into()])
        );
        assert_eq!(Condition::parse(&c.to_rule()).unwrap(), c);
        let c = Condition::parse("Title:contains:VP, Sales").unwrap();
        assert_eq!(c.values, vec!["VP, Sales".to_owned()], "only in splits on commas");
        assert_eq!(Condition::parse("LeadSource:is_blank").unwrap().op, Operator::IsBlank);
        assert!(Condition::parse("Status").unwrap_err().contains("Field:operator"));
        assert!(Condition::parse("Status:like:x").unwrap_err().contains("unknown operator"));
        assert!(Condition::parse("Status:equals").unwrap_err().contains("exactly one value"));
    }

    #[test]
    fn scopes_read_from_json_reject_unknown_keys() {
        let ok = r#"[{"field":"Status","op":"in","values":["Open","New"],"object":"lead"}]"#;
        let s: SyncScope = serde_json::from_str(ok).unwrap();
        assert_eq!(s.conditions[0].op, Operator::In);
        assert!(serde_json::from_str::<SyncScope>(r#"[{"field":"Status","op":"in","colour":"red"}]"#).is_err());
    }

    proptest! {
        /// `not_equals` is exactly the negation of `equals`, `in` with one
        /// value is `equals`, and `contains` of the whole value holds
        /// whenever `equals` does.
        #[test]
        fn operators_agree_with_each_other(value in proptest::option::of("[ a-zA-Z0-9]{0,8}"), wanted in "[a-zA-Z0-9]{1,6}") {
            let v = value.map(Value::from);
            let eq = cond("F", Operator::Equals, &[&wanted]).holds_for(v.as_ref());
            let ne = cond("F", Operator::NotEquals, &[&wanted]).holds_for(v.as_ref());
            let one_in = cond("F", Operator::In, &[&wanted]).holds_for(v.as_ref());
            let contains = cond("F", Operator::Contains, &[&wanted]).holds_for(v.as_ref());
            let blank = cond("F", Operator::IsBlank, &[]).holds_for(v.as_ref());
            prop_assert_eq!(eq, !ne);
            prop_assert_eq!(eq, one_in);
            prop_assert!(!eq || contains);
            prop_assert!(!(blank && (eq || contains)));
        }

        /// Adding a condition never lets more records in (AND).
        #[test]
        fn more_conditions_never_widen_the_scope(a in "[a-c]{0,2}", b in "[a-c]{0,2}", w1 in "[a-c]{1,2}", w2 in "[a-c]{1,2}") {
            let get = lead(&[("A", Value::from(a)), ("B", Value::from(b))]);
            let one = SyncScope::new(vec![cond("A", Operator::Contains, &[&w1])]).unwrap();
            let two = SyncScope::new(vec![cond("A", Operator::Contains, &[&w1]), cond("B", Operator::NotEquals, &[&w2])]).unwrap();
            prop_assert!(!two.includes(CrmObject::Lead, &get) || one.includes(CrmObject::Lead, &get));
        }
    }
}
