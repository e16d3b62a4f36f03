//! Reading a change event's header: events are Avro binary written with
//! the schema `GetSchema` hands out for the event's schema id; the first
//! field (by name, `ChangeEventHeader`) says what changed, how and by
//! whose call. The record's own fields are not read: the feed's query is
//! the one source of values.

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;

use super::signal::Header;

/// The header field of a change event's schema.
const HEADER_FIELD: &str = "ChangeEventHeader";

/// Reads the events written with one schema.
#[derive(Debug)]
pub(crate) struct HeaderReader {
    schema: Schema,
}

fn plain(v: &Avro) -> &Avro {
    match v {
        Avro::Union(_, inner) => plain(inner),
        other => other,
    }
}

fn text(v: &Avro) -> Option<String> {
    match plain(v) {
        Avro::String(s) | Avro::Enum(_, s) => Some(s.clone()),
        _ => None,
    }
}

impl HeaderReader {
    /// The reader of events written with `schema_json`.
    pub fn new(schema_json: &str) -> Result<Self, String> {
        let schema = Schema::parse_str(schema_json).map_err(|e| format!("a change event schema that is not Avro: {e}"))?;
        Ok(HeaderReader { schema })
    }

    /// The header of one event's payload.
    pub fn read(&self, payload: &[u8]) -> Result<Header, String> {
        let reader = GenericDatumReader::builder(&self.schema).build().map_err(|e| e.to_string())?;
        let value = reader.read_value(&mut &payload[..]).map_err(|e| format!("a change event that does not fit its schema: {e}"))?;
        let Avro::Record(fields) = value else { return Err("a change event that is not a record".into()) };
        let header = fields
            .iter()
            .find(|(name, _)| name == HEADER_FIELD)
            .map(|(_, v)| plain(v))
            .ok_or_else(|| format!("a change event without its {HEADER_FIELD}"))?;
        let Avro::Record(header) = header else { return Err(format!("a {HEADER_FIELD} that is not a record")) };
        let field = |name: &str| header.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let record_ids = match field("recordIds").map(plain) {
            Some(Avro::Array(items)) => items.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        let commit_ms = match field("commitTimestamp").map(plain) {
            Some(Avro::Long(ms)) => *ms,
            Some(Avro::Int(ms)) => i64::from(*ms),
            _ => return Err("a change event header without its commitTimestamp".into()),
        };
        Ok(Header {
            entity: field("entityName").and_then(text).ok_or("a change event header without its entityName")?,
            change_type: field("changeType").and_then(text).ok_or("a change event header without its changeType")?,
            record_ids,
            change_origin: field("changeOrigin").and_then(text).unwrap_or_default(),
            commit_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::json;

    use super::*;

    /// A schema shaped as Salesforce's: the header record first, then the
    /// record's fields, each a union with null.
    fn schema() -> String {
        let strings = json!({"type": "array", "items": "string"});
        json!({
            "type": "record", "name": "LeadChangeEvent", "namespace": "com.sforce.eventbus",
            "fields": [
                {"name": "ChangeEventHeader", "type": {"type": "record", "name": "ChangeEventHeader", "fields": [
                    {"name": "entityName", "type": "string"},
                    {"name": "recordIds", "type": strings},
                    {"name": "changeType", "type": {"type": "enum", "name": "ChangeType",
                        "symbols": ["CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW"]}},
                    {"name": "changeOrigin", "type": "string"},
                    {"name": "transactionKey", "type": "string"},
                    {"name": "sequenceNumber", "type": "int"},
                    {"name": "commitTimestamp", "type": "long"},
                    {"name": "commitNumber", "type": "long"},
                    {"name": "commitUser", "type": "string"},
                    {"name": "nulledFields", "type": strings},
                    {"name": "diffFields", "type": strings},
                    {"name": "changedFields", "type": strings}
                ]}},
                {"name": "Title", "type": ["null", "string"], "default": null}
            ]
        })
        .to_string()
    }

    #[test]
    fn the_header_is_read_from_an_avro_event() {
        let json = schema();
        let schema = Schema::parse_str(&json).unwrap();
        let header = Avro::Record(vec![
            ("entityName".into(), Avro::String("Lead".into())),
            ("recordIds".into(), Avro::Array(vec![Avro::String("00Q5g00000AbCdEEAA".into())])),
            ("changeType".into(), Avro::Enum(5, "GAP_UPDATE".into())),
            ("changeOrigin".into(), Avro::String("com/salesforce/api/rest/60.0;client=crmsync".into())),
            ("transactionKey".into(), Avro::String("t".into())),
            ("sequenceNumber".into(), Avro::Int(1)),
            ("commitTimestamp".into(), Avro::Long(1_700_000_000_123)),
            ("commitNumber".into(), Avro::Long(7)),
            ("commitUser".into(), Avro::String("005".into())),
            ("nulledFields".into(), Avro::Array(vec![])),
            ("diffFields".into(), Avro::Array(vec![])),
            ("changedFields".into(), Avro::Array(vec![])),
        ]);
        let event = Avro::Record(vec![
            ("ChangeEventHeader".into(), header),
            ("Title".into(), Avro::Union(1, Box::new(Avro::String("CTO".into())))),
        ]);
        let payload = GenericDatumWriter::builder(&schema).build().unwrap().write_value_to_vec(event).unwrap();
        let read = HeaderReader::new(&json).unwrap().read(&payload).unwrap();
        assert_eq!(
            read,
            Header {
                entity: "Lead".into(),
                change_type: "GAP_UPDATE".into(),
                record_ids: vec!["00Q5g00000AbCdEEAA".into()],
                change_origin: "com/salesforce/api/rest/60.0;client=crmsync".into(),
                commit_ms: 1_700_000_000_123,
            }
        );
        assert!(HeaderReader::new(&json).unwrap().read(&payload[..3]).is_err(), "a cut payload is refused");
        assert!(HeaderReader::new("{").is_err());
    }
}
