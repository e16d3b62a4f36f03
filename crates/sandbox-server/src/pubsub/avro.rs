//! Change events as Avro, the way the Pub/Sub API sends them: one schema per
//! entity (`LeadChangeEvent`, namespace `com.sforce.eventbus`) whose first
//! field is the `ChangeEventHeader` record and whose other fields are the
//! record's, each a union with null (compound fields as nested records),
//! and events in Avro's binary encoding without a container.
//!
//! What Salesforce's Pub/Sub API guide and Change Data Capture guide say
//! an event holds, and this module writes:
//!
//! - create and undelete: every field, null where the record has no value;
//! - update: the changed fields, every other field null; `changedFields`
//!   names the changed ones (`LastModifiedDate` always), `nulledFields` the
//!   ones set to null, as bitmaps over schema positions
//!   ([`crmsync_pubsub::bitmap`]);
//! - delete and gap events: every field null; overflow events carry no
//!   record id either;
//! - dates and times as epoch milliseconds (longs).
//!
//! A schema's id is a fingerprint of its canonical form: the first 16
//! bytes of its SHA-256, base64url (22 characters, like Salesforce's).

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use crmsync_pubsub::{Topic, bitmap};
use crmsync_sandbox::cdc::entities::{Field, Kind, Layout, Slot};
use crmsync_sandbox::cdc::{ChangeEvent, ChangeType};
use serde_json::{Value, json};
use sha2::Digest;

/// An entity's event schema: its Avro form, JSON text, id and layout.
#[derive(Debug)]
pub struct EventSchema {
    pub id: String,
    pub json: String,
    pub layout: Layout,
    schema: Schema,
}

fn avro_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "string",
        Kind::Bool => "boolean",
        Kind::Int => "int",
        Kind::Double => "double",
        Kind::Date | Kind::DateTime => "long",
    }
}

fn field_json(f: &Field) -> Value {
    json!({"name": f.api, "type": ["null", avro_type(f.kind)], "doc": f.doc, "default": null})
}

fn header_json() -> Value {
    let strings = json!({"type": "array", "items": "string"});
    let symbols: Vec<&str> = ChangeType::ALL.iter().map(|t| t.as_str()).collect();
    json!({
        "name": "ChangeEventHeader",
        "type": {
            "type": "record",
            "name": "ChangeEventHeader",
            "fields": [
                {"name": "entityName", "type": "string"},
                {"name": "recordIds", "type": strings},
                {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "symbols": symbols}},
                {"name": "changeOrigin", "type": "string"},
                {"name": "transactionKey", "type": "string"},
                {"name": "sequenceNumber", "type": "int"},
                {"name": "commitTimestamp", "type": "long"},
                {"name": "commitNumber", "type": "long"},
                {"name": "commitUser", "type": "string"},
                {"name": "nulledFields", "type": strings},
                {"name": "diffFields", "type": strings},
                {"name": "changedFields", "type": strings}
            ]
        },
        "doc": "Data:ChangeEventHeader"
    })
}

impl EventSchema {
    /// The schema of an entity's events.
    pub fn new(layout: Layout) -> Result<EventSchema, apache_avro::Error> {
        let mut fields = vec![header_json()];
        for slot in &layout.slots {
            fields.push(match slot {
                Slot::Plain(f) => field_json(f),
                Slot::Compound { api, record, parts } => json!({
                    "name": api,
                    "type": ["null", {"type": "record", "name": record, "fields": parts.iter().map(field_json).collect::<Vec<_>>()}],
                    "doc": format!("Data:{record}"),
                    "default": null
                }),
            });
        }
        let json = json!({
            "type": "record",
            "name": Topic::event_name(&layout.entity),
            "namespace": "com.sforce.eventbus",
            "fields": fields
        })
        .to_string();
        let schema = Schema::parse_str(&json)?;
        let digest = sha2::Sha256::digest(schema.canonical_form().as_bytes());
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]);
        Ok(EventSchema { id, json, layout, schema })
    }

    /// An event in Avro binary encoding.
    pub fn encode(&self, e: &ChangeEvent) -> Result<Vec<u8>, apache_avro::Error> {
        let carries_values = matches!(e.change_type, ChangeType::Create | ChangeType::Undelete | ChangeType::Update);
        let value = |f: &Field| -> Avro {
            let v = f.column.as_deref().filter(|_| carries_values).and_then(|c| e.fields.get(c));
            match v.and_then(|v| avro_value(f.kind, v)) {
                Some(v) => Avro::Union(1, Box::new(v)),
                None => Avro::Union(0, Box::new(Avro::Null)),
            }
        };
        let is_changed = |f: &Field| f.column.as_ref().is_some_and(|c| e.changed.contains(c));
        let is_nulled = |f: &Field| is_changed(f) && f.column.as_ref().and_then(|c| e.fields.get(c)).is_none_or(Value::is_null);
        let mut record = vec![("ChangeEventHeader".to_owned(), Avro::Null)];
        let (mut changed_top, mut nulled_top, mut changed_nested, mut nulled_nested) = (vec![], vec![], vec![], vec![]);
        for (i, slot) in self.layout.slots.iter().enumerate() {
            let position = i + 1;
            match slot {
                Slot::Plain(f) => {
                    if is_changed(f) {
                        changed_top.push(position);
                    }
                    if is_nulled(f) {
                        nulled_top.push(position);
                    }
                    record.push((f.api.clone(), value(f)));
                }
                Slot::Compound { api, parts, .. } => {
                    let changed: Vec<usize> = parts.iter().enumerate().filter(|(_, f)| is_changed(f)).map(|(j, _)| j).collect();
                    let nulled: Vec<usize> = parts.iter().enumerate().filter(|(_, f)| is_nulled(f)).map(|(j, _)| j).collect();
                    let values: Vec<(String, Avro)> = parts.iter().map(|f| (f.api.clone(), value(f))).collect();
                    // Present when any part is: a create's name, an update's changed part.
                    let present = values.iter().any(|(_, v)| !matches!(v, Avro::Union(0, _))) || !changed.is_empty();
                    record.push((
                        api.clone(),
                        if present && carries_values {
                            Avro::Union(1, Box::new(Avro::Record(values)))
                        } else {
                            Avro::Union(0, Box::new(Avro::Null))
                        },
                    ));
                    changed_nested.push((position, changed));
                    nulled_nested.push((position, nulled));
                }
            }
        }
        let is_update = e.change_type == ChangeType::Update;
        let bitmaps = |top: &[usize], nested: &[(usize, Vec<usize>)]| -> Avro {
            let list = if is_update { bitmap::encode(top, nested) } else { Vec::new() };
            Avro::Array(list.into_iter().map(Avro::String).collect())
        };
        let type_index = ChangeType::ALL.iter().position(|t| *t == e.change_type).unwrap_or(0) as u32;
        record[0].1 = Avro::Record(vec![
            ("entityName".into(), Avro::String(e.entity.clone())),
            ("recordIds".into(), Avro::Array(e.record_ids.iter().cloned().map(Avro::String).collect())),
            ("changeType".into(), Avro::Enum(type_index, e.change_type.as_str().into())),
            ("changeOrigin".into(), Avro::String(e.change_origin.clone())),
            ("transactionKey".into(), Avro::String(e.transaction_key.clone())),
            ("sequenceNumber".into(), Avro::Int(e.sequence_number)),
            ("commitTimestamp".into(), Avro::Long(e.commit_timestamp.timestamp_millis())),
            ("commitNumber".into(), Avro::Long(e.commit_number)),
            ("commitUser".into(), Avro::String(e.commit_user.clone())),
            ("nulledFields".into(), bitmaps(&nulled_top, &nulled_nested)),
            ("diffFields".into(), Avro::Array(Vec::new())),
            ("changedFields".into(), bitmaps(&changed_top, &changed_nested)),
        ]);
        GenericDatumWriter::builder(&self.schema).build()?.write_value_to_vec(Avro::Record(record))
    }
}

/// A captured JSON value as the field's Avro value; `None` for null or a
/// value that does not fit the type.
fn avro_value(kind: Kind, v: &Value) -> Option<Avro> {
    Some(match (kind, v) {
        (_, Value::Null) => return None,
        (Kind::Text, Value::String(s)) => Avro::String(s.clone()),
        (Kind::Text, other) => Avro::String(other.to_string()),
        (Kind::Bool, Value::Bool(b)) => Avro::Boolean(*b),
        (Kind::Int, v) => Avro::Int(i32::try_from(v.as_i64()?).ok()?),
        (Kind::Double, v) => Avro::Double(v.as_f64().or_else(|| v.as_str()?.parse().ok())?),
        (Kind::Date, Value::String(s)) => {
            let day = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            Avro::Long(day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
        }
        (Kind::DateTime, Value::String(s)) => Avro::Long(DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc).timestamp_millis()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use apache_avro::reader::datum::GenericDatumReader;
    use crmsync_sandbox::cdc::entities;

    use super::*;

    fn event(change_type: ChangeType, fields: Value, changed: &[&str]) -> ChangeEvent {
        ChangeEvent {
            replay_id: 7,
            entity: "Lead".into(),
            change_type,
            record_ids: vec!["00Q5g0000000001AAA".into()],
            change_origin: "com/salesforce/api/rest/60.0;client=crmsync".into(),
            transaction_key: "k".into(),
            sequence_number: 1,
            commit_timestamp: Utc::now(),
            commit_number: 3,
            commit_user: "0055g0000000001AAA".into(),
            fields: fields.as_object().cloned().unwrap_or_default(),
            changed: changed.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn decode(schema: &EventSchema, bytes: &[u8]) -> Vec<(String, Avro)> {
        match GenericDatumReader::builder(&schema.schema).build().unwrap().read_value(&mut &bytes[..]).unwrap() {
            Avro::Record(fields) => fields,
            other => panic!("not a record: {other:?}"),
        }
    }

    fn get<'a>(record: &'a [(String, Avro)], name: &str) -> &'a Avro {
        &record.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn an_update_carries_its_changed_fields_and_their_bitmaps() {
        let schema = EventSchema::new(entities::standard("Lead").unwrap()).unwrap();
        let e = event(
            ChangeType::Update,
            json!({"title": "CTO", "first_name": null, "modstamp": "2026-01-02T03:04:05.006+00:00"}),
            &["title", "first_name", "modstamp"],
        );
        let record = decode(&schema, &schema.encode(&e).unwrap());
        assert_eq!(get(&record, "Title"), &Avro::Union(1, Box::new(Avro::String("CTO".into()))));
        assert_eq!(get(&record, "Company"), &Avro::Union(0, Box::new(Avro::Null)));
        assert_eq!(get(&record, "LastModifiedDate"), &Avro::Union(1, Box::new(Avro::Long(1_767_323_045_006))));
        let Avro::Record(header) = get(&record, "ChangeEventHeader") else { panic!() };
        let strings = |name| match get(header, name) {
            Avro::Array(a) => a.iter().map(|v| if let Avro::String(s) = v { s.clone() } else { panic!() }).collect::<Vec<_>>(),
            _ => panic!(),
        };
        let shape: Vec<bitmap::FieldShape> = std::iter::once(bitmap::FieldShape { name: "ChangeEventHeader".into(), nested: None })
            .chain(schema.layout.slots.iter().map(|s| match s {
                Slot::Plain(f) => bitmap::FieldShape { name: f.api.clone(), nested: None },
                Slot::Compound { api, parts, .. } => {
                    bitmap::FieldShape { name: api.clone(), nested: Some(parts.iter().map(|p| p.api.clone()).collect()) }
                }
            }))
            .collect();
        assert_eq!(bitmap::decode(&strings("changedFields"), &shape), ["Title", "LastModifiedDate", "Name.FirstName"]);
        assert_eq!(bitmap::decode(&strings("nulledFields"), &shape), ["Name.FirstName"]);
    }

    #[test]
    fn a_create_carries_every_value_and_no_bitmap() {
        let schema = EventSchema::new(entities::standard("Opportunity").unwrap()).unwrap();
        let e = event(ChangeType::Create, json!({"name": "Deal", "amount": 12.5, "close_date": "2026-03-01", "is_won": false}), &[]);
        let record = decode(&schema, &schema.encode(&e).unwrap());
        assert_eq!(get(&record, "Amount"), &Avro::Union(1, Box::new(Avro::Double(12.5))));
        assert_eq!(get(&record, "CloseDate"), &Avro::Union(1, Box::new(Avro::Long(1_772_323_200_000))));
        let Avro::Record(header) = get(&record, "ChangeEventHeader") else { panic!() };
        assert_eq!(get(header, "changedFields"), &Avro::Array(vec![]));
        assert_eq!(get(header, "changeType"), &Avro::Enum(0, "CREATE".into()));
    }

    #[test]
    fn schema_ids_are_stable_fingerprints() {
        let a = EventSchema::new(entities::standard("Lead").unwrap()).unwrap();
        let b = EventSchema::new(entities::standard("Lead").unwrap()).unwrap();
        let c = EventSchema::new(entities::standard("Contact").unwrap()).unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.id.len(), 22);
    }
}
