//! The CRM objects the MA mirrors (accounts, opportunities, contact roles,
//! custom objects): change feeds and look-ups by field, deleted records
//! included, as `queryAll` returns them.

use crmsync_connector::{ChangePage, ConnectorError, Cursor};
use crmsync_domain::mirror::{CrmObjectRecord, MirrorObject};
use crmsync_domain::records::{FieldValue, Fields};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use crate::schema::{ACCOUNT, CONTACT_ROLE, CUSTOM, OPPORTUNITY, ObjectDef};
use crate::store::{self, db_error};

/// The table of an object, and the custom type to filter on.
fn def_of(object: &MirrorObject) -> (&'static ObjectDef, Option<&str>) {
    match object {
        MirrorObject::Account => (&ACCOUNT, None),
        MirrorObject::Opportunity => (&OPPORTUNITY, None),
        MirrorObject::ContactRole => (&CONTACT_ROLE, None),
        MirrorObject::Custom(name) => (&CUSTOM, Some(name.as_str())),
    }
}

/// A custom record's fields: its JSON document, stamped as one field.
fn custom_fields(row: &Value) -> Fields {
    let stamp = row.get("field_stamps").and_then(|s| s.get("fields"));
    let at = stamp.and_then(|s| s.get("at")).and_then(Value::as_str).and_then(crmsync_domain::time::parse);
    let by = stamp.and_then(|s| s.get("by")).and_then(Value::as_str).map(str::to_owned);
    row.get("fields")
        .and_then(Value::as_object)
        .map(|doc| doc.iter().map(|(k, v)| (k.clone(), FieldValue { value: v.clone(), at, by: by.clone() })).collect())
        .unwrap_or_default()
}

pub(crate) fn record(object: &MirrorObject, row: &Value) -> Result<CrmObjectRecord, ConnectorError> {
    let (def, custom) = def_of(object);
    Ok(CrmObjectRecord {
        id: store::text(row, "id").ok_or_else(|| ConnectorError::Fatal(format!("{object} row without id")))?,
        object: object.clone(),
        is_deleted: store::flag(row, "is_deleted"),
        system_modstamp: store::time(row, "modstamp")?,
        fields: if custom.is_some() { custom_fields(row) } else { store::fields(def, row) },
    })
}

pub(crate) async fn changes(
    pool: &PgPool,
    tenant: &str,
    object: &MirrorObject,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<ChangePage<CrmObjectRecord>, ConnectorError> {
    let (def, custom) = def_of(object);
    let (rows, next, has_more) = store::changes(pool, def, tenant, custom, cursor, limit).await?;
    let records = rows.iter().map(|r| record(object, &store::value(r)?)).collect::<Result<_, _>>()?;
    Ok(ChangePage { records, next, has_more })
}

pub(crate) async fn changes_pending(
    pool: &PgPool,
    tenant: &str,
    object: &MirrorObject,
    cursor: Option<&Cursor>,
) -> Result<bool, ConnectorError> {
    let (def, custom) = def_of(object);
    store::changes_pending(pool, def, tenant, custom, cursor).await
}

/// The SQL expression of an API field of `def` (`Id`, a column, or a key of a
/// custom record's document). Names are checked, so they are safe in SQL.
pub(crate) fn column(def: &ObjectDef, custom: bool, field: &str) -> Result<String, ConnectorError> {
    if field == "Id" {
        return Ok("t.id".into());
    }
    if custom {
        if field.is_empty() || !field.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ConnectorError::Fatal(format!("{field:?} is not a field name")));
        }
        return Ok(format!("(t.fields ->> '{field}')"));
    }
    def.by_api(field)
        .map(|c| format!("t.{}", c.column))
        .ok_or_else(|| ConnectorError::Fatal(format!("No such column '{field}' on entity '{}'", def.name)))
}

pub(crate) async fn objects_where(
    pool: &PgPool,
    tenant: &str,
    object: &MirrorObject,
    field: &str,
    values: &[String],
) -> Result<Vec<CrmObjectRecord>, ConnectorError> {
    let (def, custom) = def_of(object);
    let col = column(def, custom.is_some(), field)?;
    let filter = if custom.is_some() { "AND t.object_type = $3" } else { "AND $3::text IS NULL" };
    let sql = format!("SELECT to_json(t) FROM {} t WHERE t.tenant = $1 AND {col} = ANY($2) {filter} ORDER BY t.id", def.table);
    let rows: Vec<Value> =
        sqlx::query_scalar(AssertSqlSafe(sql)).bind(tenant).bind(values).bind(custom).fetch_all(pool).await.map_err(db_error)?;
    rows.iter().map(|r| record(object, r)).collect()
}
