//! Per-field versions and the field behaviours (R2, I3).
//!
//! For every mapped field of an identity the engine keeps, per side, the
//! latest *user edit* it has seen (and the latest non-blank one), plus the value
//! it believes the side currently holds (`known`: the newest of what it saw and
//! what it wrote there). The value both sides should hold is a pure function of
//! the edit registers, and each register only ever moves forward in time, so:
//!
//! - an older change never overwrites a newer one, whatever order messages
//!   arrive in (I3): a register ignores anything not newer than itself;
//! - duplicates and redeliveries change nothing (the registers are idempotent);
//! - the engine's own writes are not edits, so they never feed back into the
//!   decision (I7): only `known` moves when the engine writes.
//!
//! Consequence worth knowing for `crm_wins`/`ma_wins`: a value the engine copied
//! into a blank field does not make that side the owner of it; the field keeps
//! following the other side until a user sets it on the winning side.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Timestamp;
use crate::mapping::{FieldMapping, SyncBehaviour};

/// The two systems a person lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Ma,
    Crm,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Ma => Side::Crm,
            Side::Crm => Side::Ma,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Ma => "ma",
            Side::Crm => "crm",
        }
    }
}

/// A blank value: missing, JSON null, or a string of only whitespace.
pub fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// Whether two field values are the same for sync purposes: all blanks are
/// equal, numbers compare by value (`1` and `1.0`), everything else exactly.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        _ if is_blank(a) || is_blank(b) => is_blank(a) && is_blank(b),
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// A value's canonical text, used only to break ties between equal times.
fn canonical(v: &Value) -> String {
    v.to_string()
}

/// A value with the time it was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned {
    #[serde(with = "crate::time")]
    pub at: Timestamp,
    #[serde(rename = "v")]
    pub value: Value,
}

impl Versioned {
    pub fn new(at: Timestamp, value: Value) -> Self {
        Versioned { at, value }
    }

    /// Total order: by time, then by value so that two different values
    /// stamped with the same time resolve the same way on every replica.
    fn beats(&self, other: &Versioned) -> bool {
        match self.at.cmp(&other.at) {
            // The same value seen again (a re-read, a redelivery) is the
            // common tie, and needs no printing to lose it.
            std::cmp::Ordering::Equal => self.value != other.value && canonical(&self.value) > canonical(&other.value),
            o => o.is_gt(),
        }
    }

    fn is_filled(&self) -> bool {
        !is_blank(&self.value)
    }
}

/// Keeps `slot` as the newest of itself and `candidate`. Returns true if it moved.
fn keep_newest(slot: &mut Option<Versioned>, candidate: &Versioned) -> bool {
    match slot {
        Some(cur) if !candidate.beats(cur) => false,
        _ => {
            *slot = Some(candidate.clone());
            true
        }
    }
}

/// The edits seen on one side of one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SideState {
    /// The latest user edit, blank or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Versioned>,
    /// The latest non-blank user edit, stored only while `last` is blank
    /// (otherwise it is `last` itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filled: Option<Versioned>,
    /// What the side holds as far as the engine knows: the newest of the edits
    /// seen and the engine's own writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known: Option<Versioned>,
}

impl SideState {
    /// The latest non-blank user edit.
    pub fn last_filled(&self) -> Option<&Versioned> {
        match &self.last {
            Some(l) if l.is_filled() => Some(l),
            _ => self.filled.as_ref(),
        }
    }

    fn observe(&mut self, edit: &Versioned) -> bool {
        let mut filled = self.last_filled().cloned();
        if edit.is_filled() {
            keep_newest(&mut filled, edit);
        }
        let moved = keep_newest(&mut self.last, edit);
        self.filled = match &self.last {
            Some(l) if l.is_filled() => None,
            _ => filled,
        };
        keep_newest(&mut self.known, edit);
        moved
    }
}

/// Everything the engine knows about one mapped field of one identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldState {
    #[serde(default, skip_serializing_if = "SideState::is_empty")]
    pub ma: SideState,
    #[serde(default, skip_serializing_if = "SideState::is_empty")]
    pub crm: SideState,
}

impl SideState {
    fn is_empty(&self) -> bool {
        self.last.is_none() && self.filled.is_none() && self.known.is_none()
    }
}

impl FieldState {
    pub fn side(&self, side: Side) -> &SideState {
        match side {
            Side::Ma => &self.ma,
            Side::Crm => &self.crm,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut SideState {
        match side {
            Side::Ma => &mut self.ma,
            Side::Crm => &mut self.crm,
        }
    }

    /// Records a user edit seen on `side`. Returns true if it was news, that
    /// is, newer than every edit already seen on that side.
    pub fn observe(&mut self, side: Side, edit: &Versioned) -> bool {
        self.side_mut(side).observe(edit)
    }

    /// Records that the engine wrote `value` to `side` at `at`. Never moves the
    /// edit registers: the engine's writes are not edits.
    pub fn wrote(&mut self, side: Side, at: Timestamp, value: Value) {
        let known = &mut self.side_mut(side).known;
        // A write lands after everything it was computed from; if the target's
        // clock reads earlier than an edit we saw, keep the write on top anyway.
        let at = match known {
            Some(k) if k.at >= at => k.at + chrono::Duration::microseconds(1),
            _ => at,
        };
        *known = Some(Versioned::new(at, value));
    }

    /// The value each side should hold, by the field's behaviour; `None` means
    /// "no opinion: leave that side alone".
    pub fn desired(&self, mapping: &FieldMapping) -> Desired {
        let pick = |side: Side| -> Option<&Versioned> {
            let s = self.side(side);
            if mapping.blank_overwrites { s.last.as_ref() } else { s.last_filled().or(s.last.as_ref()) }
        };
        let newest = |a: Option<&'_ Versioned>, b: Option<&'_ Versioned>| -> Option<Value> {
            match (a, b) {
                (Some(x), Some(y)) => Some(if y.beats(x) { y.value.clone() } else { x.value.clone() }),
                (x, y) => x.or(y).map(|v| v.value.clone()),
            }
        };
        // "Winner's filled value, else the other side's filled value, else any
        // blank", or with blank_overwrites "winner's latest, else the other's".
        let prefer = |winner: Side| -> Option<Value> {
            let (w, o) = (self.side(winner), self.side(winner.other()));
            if mapping.blank_overwrites {
                w.last.as_ref().or(o.last.as_ref()).map(|v| v.value.clone())
            } else {
                w.last_filled().or(o.last_filled()).or(w.last.as_ref()).or(o.last.as_ref()).map(|v| v.value.clone())
            }
        };
        let both = |v: Option<Value>| Desired { ma: v.clone(), crm: v };
        match mapping.sync {
            SyncBehaviour::MostRecent => {
                if mapping.blank_overwrites {
                    both(newest(pick(Side::Ma), pick(Side::Crm)))
                } else {
                    let filled = newest(self.ma.last_filled(), self.crm.last_filled());
                    both(filled.or_else(|| newest(self.ma.last.as_ref(), self.crm.last.as_ref())))
                }
            }
            SyncBehaviour::CrmWins => both(prefer(Side::Crm)),
            SyncBehaviour::MaWins => both(prefer(Side::Ma)),
            SyncBehaviour::ReadOnly => {
                let source = mapping.read_only_source();
                let value = pick(source).map(|v| v.value.clone());
                match source {
                    Side::Ma => Desired { ma: None, crm: value },
                    Side::Crm => Desired { ma: value, crm: None },
                }
            }
        }
    }

    /// The write `side` needs, if its known value differs from the desired one.
    pub fn needed_write(&self, mapping: &FieldMapping, side: Side) -> Option<Value> {
        let desired = self.desired(mapping);
        let want = match side {
            Side::Ma => desired.ma,
            Side::Crm => desired.crm,
        }?;
        match &self.side(side).known {
            Some(k) if same_value(&k.value, &want) => None,
            // Nothing known there yet: a blank needs no write.
            None if is_blank(&want) => None,
            // A blank never erases a filled value unless the field says so.
            // Without a filled edit anywhere the wanted value is blank while
            // the side holds what the engine put there itself (a new lead's
            // placeholder for a required field): that stays.
            Some(_) if is_blank(&want) && !mapping.blank_overwrites => None,
            _ => Some(want),
        }
    }
}

/// The value each side should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub ma: Option<Value>,
    pub crm: Option<Value>,
}

/// A user edit of one mapped field, as carried in apply commands. `field` is
/// the MA field name (the mapping's canonical key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub field: String,
    pub side: Side,
    #[serde(with = "crate::time")]
    pub at: Timestamp,
    #[serde(rename = "v")]
    pub value: Value,
    /// The source only told when the *record* last changed, not this field
    /// (real APIs: `SystemModstamp`, `updatedAt`), and not by whom. Such a
    /// value is an edit only if it differs from what the engine knows the
    /// side holds and is not older than that knowledge: an unchanged field, or
    /// a stale re-read of a record the engine has written since, is no edit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coarse: bool,
}

impl Observation {
    /// Whether this observation tells the engine something it does not know,
    /// given what it knows `side` holds.
    pub fn is_news(&self, known: Option<&Versioned>) -> bool {
        match known {
            None => true,
            Some(k) if self.coarse => self.at >= k.at && !same_value(&k.value, &self.value),
            Some(k) => !same_value(&k.value, &self.value),
        }
    }
}

/// The per-field state of one identity, keyed by MA field name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdentityFields(pub BTreeMap<String, FieldState>);

impl IdentityFields {
    /// Merges user edits. Edits on a side the field does not accept edits from
    /// (read-only fields) and edits of unmapped fields are ignored. Returns the
    /// number of edits that were news.
    pub fn observe_all<'a>(&mut self, map: &crate::mapping::FieldMap, observations: impl IntoIterator<Item = &'a Observation>) -> usize {
        let mut news = 0;
        for o in observations {
            let Some(mapping) = map.by_ma_field(&o.field) else { continue };
            if !mapping.accepts_edits_from(o.side) {
                continue;
            }
            let state = self.0.entry(o.field.clone()).or_default();
            if o.coarse && !o.is_news(state.side(o.side).known.as_ref()) {
                continue;
            }
            let edit = Versioned::new(o.at, o.value.clone());
            if state.observe(o.side, &edit) {
                news += 1;
            }
        }
        news
    }

    /// The writes `side` needs: MA field name → value, in mapping order.
    /// `fields` limits the plan to the fields that exist on that side (a CRM
    /// contact has no `company`).
    pub fn plan<'m>(&self, mappings: impl IntoIterator<Item = &'m FieldMapping>, side: Side) -> Vec<(String, Value)> {
        mappings
            .into_iter()
            .filter_map(|m| {
                let state = self.0.get(&m.ma)?;
                state.needed_write(m, side).map(|v| (m.ma.clone(), v))
            })
            .collect()
    }

    pub fn wrote(&mut self, side: Side, field: &str, at: Timestamp, value: Value) {
        self.0.entry(field.to_owned()).or_default().wrote(side, at, value);
    }

    /// Forgets what the engine believed `side` holds (the side is another
    /// record now, e.g. a converted lead's contact), so every desired value is
    /// written there again. Edits seen stay: they still decide the values.
    pub fn forget_known(&mut self, side: Side) {
        for state in self.0.values_mut() {
            match side {
                Side::Ma => state.ma.known = None,
                Side::Crm => state.crm.known = None,
            }
        }
    }

    pub fn get(&self, field: &str) -> Option<&FieldState> {
        self.0.get(field)
    }

    /// What the engine knows `side` holds in `field` (null when nothing is
    /// known): the "before" of a record's history.
    pub fn known(&self, side: Side, field: &str) -> Value {
        self.0.get(field).and_then(|f| f.side(side).known.as_ref()).map_or(Value::Null, |v| v.value.clone())
    }

    /// The email this identity should be keyed by: the value its email field
    /// resolves to by its behaviour (R8: an email change moves the key).
    pub fn desired_email(&self, map: &crate::mapping::FieldMap) -> Option<crate::email::Email> {
        let field = crate::mapping::EMAIL_FIELD;
        let d = self.get(field)?.desired(map.by_ma_field(field)?);
        crate::email::Email::parse(d.ma.or(d.crm)?.as_str()?).ok()
    }
}

mod part;
pub use part::Part;

#[cfg(test)]
mod tests;
