//! The sandbox CRM's validation rules and duplicate rules (sandbox migration
//! 0005): an org admin's own refusals on top of the API's built-in checks
//! (`validate`). A refused write gets Salesforce's codes,
//! `FIELD_CUSTOM_VALIDATION_EXCEPTION` with the rule's message and
//! `DUPLICATES_DETECTED`, so the engine sees what it would see from a real
//! org, directly or over HTTP.

use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, PgConnection};

use crate::schema::ObjectDef;

/// The org's active rules for one object, read once per write call: most
/// calls meet no rule at all, and reading them for every record cost each
/// record two round trips.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    validation: bool,
    duplicates: Vec<(String, String)>,
}

impl Rules {
    pub(crate) async fn load(conn: &mut PgConnection, def: &ObjectDef, tenant: &str) -> Result<Rules, sqlx::Error> {
        if !matches!(def.name, "lead" | "contact") {
            return Ok(Rules::default());
        }
        // One round trip for both kinds: this runs once per write call.
        let (validation, names, fields): (bool, Vec<String>, Vec<String>) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM crm.validation_rules WHERE tenant = $1 AND object = $2 AND active), \
                coalesce(array_agg(d.name ORDER BY d.name), '{}'), coalesce(array_agg(d.field ORDER BY d.name), '{}') \
             FROM crm.duplicate_rules d WHERE d.tenant = $1 AND d.object = $2 AND d.active",
        )
        .bind(tenant)
        .bind(def.name)
        .fetch_one(&mut *conn)
        .await?;
        let duplicates = names.into_iter().zip(fields).collect();
        Ok(Rules { validation, duplicates })
    }

    /// Whether the org has any active rule for the object: without one, no
    /// write needs to read other rows before it is made.
    pub(crate) fn any(&self) -> bool {
        self.validation || !self.duplicates.is_empty()
    }

    /// Why the rules refuse the record as it would be after the write
    /// (`after`: the stored row with the write's columns laid over it), if
    /// they do. `id` is the record's own id (`None` when creating), `changed`
    /// the columns the write sets: a duplicate rule, as in Salesforce, runs
    /// on a create and on an edit of the field it matches on.
    pub(crate) async fn refusal(
        &self,
        conn: &mut PgConnection,
        def: &ObjectDef,
        tenant: &str,
        id: Option<&str>,
        after: &Map<String, Value>,
        changed: &Map<String, Value>,
    ) -> Result<Option<(&'static str, String)>, sqlx::Error> {
        if !self.any() {
            return Ok(None);
        }
        let after = Value::Object(after.clone());
        let broken: Option<String> = if !self.validation {
            None
        } else {
            sqlx::query_scalar(
                "SELECT message FROM crm.validation_rules \
             WHERE tenant = $1 AND object = $2 AND active AND NOT (coalesce($3::jsonb ->> field, '') ~ must_match) \
             ORDER BY name LIMIT 1",
            )
            .bind(tenant)
            .bind(def.name)
            .bind(&after)
            .fetch_optional(&mut *conn)
            .await?
        };
        if let Some(message) = broken {
            return Ok(Some(("FIELD_CUSTOM_VALIDATION_EXCEPTION", message)));
        }
        for (name, field) in &self.duplicates {
            let value = after.get(field.as_str()).and_then(Value::as_str).unwrap_or("").trim();
            if value.is_empty() || (id.is_some() && !changed.contains_key(field.as_str())) {
                continue;
            }
            // A converted lead is a contact now: it is no duplicate of a lead.
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {} t WHERE t.tenant = $1 AND NOT t.is_deleted AND t.id IS DISTINCT FROM $2 \
                   AND (to_jsonb(t) ->> 'is_converted') IS DISTINCT FROM 'true' AND lower(to_jsonb(t) ->> $3) = lower($4))",
                def.table
            );
            let duplicate: bool =
                sqlx::query_scalar(AssertSqlSafe(sql)).bind(tenant).bind(id).bind(field).bind(value).fetch_one(&mut *conn).await?;
            if duplicate {
                return Ok(Some((
                    "DUPLICATES_DETECTED",
                    format!(
                        "You're creating a duplicate record (duplicate rule {name}, matching on {field}). Use one of these records instead."
                    ),
                )));
            }
        }
        Ok(None)
    }
}
