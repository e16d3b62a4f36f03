//! Objects as a command names them, and the CRM's custom object records
//! (`custom:Subscription__c`): created, changed, deleted, restored, shown
//! and listed like any other object's, within their own type.
//!
//! Every type lives in one table (`crm.custom_records`, fields in JSON), so
//! each statement here names the type: an id of another type is not found,
//! as the CRM would say of a record of another object.

use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::{OpsError, Sandbox, System};
use crate::schema::{self, ObjectDef};

/// An object as a command names it: one of the sandbox's objects, or the
/// records of a custom object.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Object(&'static ObjectDef),
    /// A custom object's API name (`Subscription__c`).
    Custom(&'a str),
}

impl<'a> Target<'a> {
    /// `prospect`, `lead`... or `custom:<Name__c>`.
    pub fn parse(name: &'a str) -> Result<Target<'a>, OpsError> {
        match name.strip_prefix("custom:") {
            Some("") => Err(OpsError::Invalid("name the custom object: custom:<Name__c>".into())),
            Some(kind) => Ok(Target::Custom(kind)),
            None if name == "custom" => Err(OpsError::Invalid("name the custom object: custom:<Name__c>".into())),
            None => schema::object(name).map(Target::Object).ok_or_else(|| {
                let names: Vec<&str> = schema::OBJECTS.iter().map(|o| o.name).collect();
                OpsError::Invalid(format!("no sandbox object {name:?}; objects: {}, custom:<Name__c>", names.join(", ")))
            }),
        }
    }

    /// The system whose user edits it.
    pub(crate) fn system(self) -> System {
        match self {
            Target::Object(def) => Sandbox::system_of(def),
            Target::Custom(_) => System::Crm,
        }
    }
}

/// A custom field value typed from command-line text: JSON literals (numbers,
/// true/false) as such, anything else as text.
pub(crate) fn custom_value(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ if raw.is_empty() => Value::Null,
        _ => Value::String(raw.to_owned()),
    }
}

fn fields(values: &[(String, String)]) -> Map<String, Value> {
    values.iter().map(|(k, v)| (k.clone(), custom_value(v))).collect()
}

impl Sandbox {
    fn custom_not_found(&self, kind: &str, id: &str) -> OpsError {
        OpsError::NotFound { object: "custom record", id: format!("{id} ({kind})"), tenant: self.tenant.clone() }
    }

    /// Inserts a custom record as `actor` on `conn`; returns its id.
    pub(crate) async fn insert_custom_on(
        &self,
        conn: &mut PgConnection,
        kind: &str,
        values: &[(String, String)],
        actor: &str,
    ) -> Result<String, OpsError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO crm.custom_records (tenant, object_type, fields, last_modified_by) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&self.tenant)
        .bind(kind)
        .bind(Value::Object(fields(values)))
        .bind(actor)
        .fetch_one(conn)
        .await?)
    }

    /// Changes fields of a custom record, and moves it to the recycle bin
    /// or out of it when `deleted` says so, as `actor` on `conn`.
    pub(crate) async fn update_custom_on(
        &self,
        conn: &mut PgConnection,
        kind: &str,
        id: &str,
        values: &[(String, String)],
        deleted: Option<bool>,
        actor: &str,
    ) -> Result<(), OpsError> {
        let done = sqlx::query(
            "UPDATE crm.custom_records SET fields = fields || $4, is_deleted = coalesce($5, is_deleted), last_modified_by = $6 \
             WHERE tenant = $1 AND object_type = $2 AND id = $3",
        )
        .bind(&self.tenant)
        .bind(kind)
        .bind(id)
        .bind(Value::Object(fields(values)))
        .bind(deleted)
        .bind(actor)
        .execute(conn)
        .await?;
        if done.rows_affected() == 0 {
            return Err(self.custom_not_found(kind, id));
        }
        Ok(())
    }

    /// Creates a custom object record (`Subscription__c` and the like).
    pub async fn create_custom(&self, kind: &str, values: &[(String, String)]) -> Result<String, OpsError> {
        let me = self.admin(System::Crm).await?;
        let mut conn = self.pool.acquire().await?;
        self.insert_custom_on(&mut conn, kind, values, &me).await
    }

    /// Changes fields of a custom object record of type `kind`.
    pub async fn update_custom(&self, kind: &str, id: &str, values: &[(String, String)]) -> Result<(), OpsError> {
        let me = self.admin(System::Crm).await?;
        let mut conn = self.pool.acquire().await?;
        self.update_custom_on(&mut conn, kind, id, values, None, &me).await
    }

    /// Moves a custom object record to the CRM's recycle bin, or restores it.
    pub async fn set_custom_deleted(&self, kind: &str, id: &str, deleted: bool) -> Result<(), OpsError> {
        let me = self.admin(System::Crm).await?;
        let mut conn = self.pool.acquire().await?;
        self.update_custom_on(&mut conn, kind, id, &[], Some(deleted), &me).await
    }

    /// One custom record as stored, with its change tracking.
    pub async fn show_custom(&self, kind: &str, id: &str) -> Result<Value, OpsError> {
        sqlx::query_scalar("SELECT to_json(t) FROM crm.custom_records t WHERE tenant = $1 AND object_type = $2 AND id = $3")
            .bind(&self.tenant)
            .bind(kind)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| self.custom_not_found(kind, id))
    }

    /// The most recently changed records of a custom object.
    pub async fn list_custom(&self, kind: &str, limit: i64) -> Result<Vec<Value>, OpsError> {
        Ok(sqlx::query_scalar(
            "SELECT to_json(t) FROM crm.custom_records t WHERE tenant = $1 AND object_type = $2 ORDER BY modstamp DESC, id DESC LIMIT $3",
        )
        .bind(&self.tenant)
        .bind(kind)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Creates a record of any target as its system's admin; returns its id.
    pub async fn create_target(&self, target: Target<'_>, values: &[(String, String)]) -> Result<String, OpsError> {
        match target {
            Target::Object(def) => self.create(def, values, None).await,
            Target::Custom(kind) => self.create_custom(kind, values).await,
        }
    }

    /// Changes fields of a record of any target.
    pub async fn update_target(&self, target: Target<'_>, id: &str, values: &[(String, String)]) -> Result<(), OpsError> {
        match target {
            Target::Object(def) => self.update(def, id, values, None).await,
            Target::Custom(kind) => self.update_custom(kind, id, values).await,
        }
    }

    /// Moves a record of any target to its system's recycle bin, or out.
    pub async fn set_target_deleted(&self, target: Target<'_>, id: &str, deleted: bool) -> Result<(), OpsError> {
        match target {
            Target::Object(def) => self.set_deleted(def, id, deleted).await,
            Target::Custom(kind) => self.set_custom_deleted(kind, id, deleted).await,
        }
    }

    /// One record of any target as stored.
    pub async fn show_target(&self, target: Target<'_>, id: &str) -> Result<Value, OpsError> {
        match target {
            Target::Object(def) => self.show(def, id).await,
            Target::Custom(kind) => self.show_custom(kind, id).await,
        }
    }

    /// The most recently changed records of any target.
    pub async fn list_target(&self, target: Target<'_>, limit: i64) -> Result<Vec<Value>, OpsError> {
        match target {
            Target::Object(def) => self.list(def, limit).await,
            Target::Custom(kind) => self.list_custom(kind, limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_objects_are_named_with_their_type() {
        assert!(matches!(Target::parse("custom:Subscription__c"), Ok(Target::Custom("Subscription__c"))));
        assert!(matches!(Target::parse("lead"), Ok(Target::Object(def)) if def.name == "lead"));
        for bad in ["custom", "custom:"] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("custom:<Name__c>"), "{e}");
        }
        let e = Target::parse("widget").unwrap_err().to_string();
        assert!(e.contains("no sandbox object \"widget\"") && e.contains("custom:<Name__c>"), "{e}");
    }

    #[test]
    fn custom_values_are_typed_from_text() {
        assert_eq!(custom_value("3"), Value::from(3));
        assert_eq!(custom_value("true"), Value::Bool(true));
        assert_eq!(custom_value(""), Value::Null);
        assert_eq!(custom_value("Gold"), Value::from("Gold"));
    }
}
