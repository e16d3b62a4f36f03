//! SOQL over the sandbox's tables: which table an object lives in, which
//! column (or JSON key, for custom objects) a field is, the `WHERE` as SQL
//! with bound parameters, and rows back as Salesforce records.
//!
//! Date-times compare and sort at millisecond precision, the precision the
//! API returns them in, so a cursor built from returned stamps never sees a
//! record "after" itself.

use crmsync_sandbox::schema::{self, ObjectDef};
use crmsync_wire::salesforce::{EXTERNAL_ID_FIELD, FENCE_FIELD, codes};
use crmsync_wire::soql::{Cond, Literal, Op, Order, Query};
use crmsync_wire::time;
use serde_json::{Map, Value, json};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool};

use crate::errors::SfError;

/// Where an object's records live.
#[derive(Debug, Clone)]
pub enum Table {
    /// A standard object with its definition.
    Standard { object: &'static str, def: &'static ObjectDef },
    /// CRM users.
    Users,
    /// A custom object: one type inside `crm.custom_records`.
    Custom { object: String },
}

impl Table {
    pub fn resolve(object: &str) -> Result<Table, SfError> {
        let standard = |object: &'static str, def: &'static ObjectDef| Ok(Table::Standard { object, def });
        match object.to_ascii_lowercase().as_str() {
            "lead" => standard("Lead", &schema::LEAD),
            "contact" => standard("Contact", &schema::CONTACT),
            "account" => standard("Account", &schema::ACCOUNT),
            "opportunity" => standard("Opportunity", &schema::OPPORTUNITY),
            "opportunitycontactrole" => standard("OpportunityContactRole", &schema::CONTACT_ROLE),
            "user" => Ok(Table::Users),
            o if o.ends_with("__c") => Ok(Table::Custom { object: object.to_owned() }),
            _ => Err(SfError::bad_request(codes::INVALID_TYPE, format!("sObject type '{object}' is not supported."))),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Table::Standard { object, .. } => object,
            Table::Users => "User",
            Table::Custom { object } => object,
        }
    }

    pub fn sql_table(&self) -> &'static str {
        match self {
            Table::Standard { def, .. } => def.table,
            Table::Users => "crm.users",
            Table::Custom { .. } => "crm.custom_records",
        }
    }

    fn has_deleted(&self) -> bool {
        !matches!(self, Table::Users)
    }

    /// The SQL expression of a field, and the JSON key it has in `to_json(t)`.
    fn field(&self, field: &str) -> Result<(String, FieldSource), SfError> {
        let stamp = |col: &str| (format!("date_trunc('milliseconds', t.{col})"), FieldSource::Stamp(col.to_owned()));
        let col = |c: &str| (format!("t.{c}"), FieldSource::Column(c.to_owned()));
        let unknown = || {
            SfError::bad_request(
                codes::INVALID_FIELD,
                format!(
                    "No such column '{field}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name.",
                    self.name()
                ),
            )
        };
        if field.eq_ignore_ascii_case("Id") {
            return Ok(col("id"));
        }
        match self {
            Table::Users => match field {
                "Username" | "Email" => Ok(col("email")),
                "Name" => Ok(col("name")),
                "IsActive" => Ok(col("is_active")),
                "UserPermissionsApiEnabled" => Ok(col("api_enabled")),
                "CreatedDate" => Ok(stamp("created_at")),
                _ => Err(unknown()),
            },
            _ => match field {
                "SystemModstamp" | "LastModifiedDate" => Ok(stamp("modstamp")),
                "CreatedDate" => Ok(stamp("created_at")),
                "LastModifiedById" => Ok(col("last_modified_by")),
                "CreatedById" => Ok(col("created_by")),
                "IsDeleted" => Ok(col("is_deleted")),
                FENCE_FIELD => Ok(col("sync_fence")),
                EXTERNAL_ID_FIELD if matches!(self, Table::Standard { object: "Lead" | "Contact" | "Opportunity", .. }) => {
                    Ok(col("crmsync_id"))
                }
                _ => match self {
                    Table::Standard { def, .. } => def.by_api(field).map(|c| col(c.column)).ok_or_else(unknown),
                    Table::Custom { .. } => {
                        if !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                            return Err(unknown());
                        }
                        Ok((format!("(t.fields ->> '{field}')"), FieldSource::Json(field.to_owned())))
                    }
                    Table::Users => unreachable!("handled above"),
                },
            },
        }
    }
}

/// Where a field's value is found in a row.
#[derive(Debug, Clone)]
enum FieldSource {
    Column(String),
    Stamp(String),
    Json(String),
}

fn bind(args: &mut PgArguments, value: &Literal) -> Result<(), SfError> {
    let r = match value {
        Literal::Str(s) => args.add(s.clone()),
        Literal::Num(n) => match n.parse::<i64>() {
            Ok(i) => args.add(i),
            Err(_) => args.add(n.parse::<f64>().map_err(|_| SfError::bad_request(codes::MALFORMED_QUERY, format!("bad number {n}")))?),
        },
        Literal::Bool(b) => args.add(*b),
        Literal::Null => args.add(Option::<String>::None),
        Literal::DateTime(t) => args.add(*t),
        Literal::Date(d) => args.add(*d),
    };
    r.map_err(|e| SfError::internal(e.to_string()))
}

/// Whether SOQL compares this field's text ignoring case: text fields do,
/// ids (case-sensitive in their 15-character form) don't.
fn case_insensitive(field: &str) -> bool {
    !(field.eq_ignore_ascii_case("Id") || field.ends_with("Id") || field == EXTERNAL_ID_FIELD)
}

/// Builds the SQL of a condition, binding its values after the ones already
/// in `args`.
fn condition(table: &Table, c: &Cond, args: &mut PgArguments, n: &mut usize) -> Result<String, SfError> {
    Ok(match c {
        Cond::And(all) => format!("({})", all.iter().map(|c| condition(table, c, args, n)).collect::<Result<Vec<_>, _>>()?.join(" AND ")),
        Cond::Or(any) => format!("({})", any.iter().map(|c| condition(table, c, args, n)).collect::<Result<Vec<_>, _>>()?.join(" OR ")),
        Cond::Not(c) => format!("(NOT {})", condition(table, c, args, n)?),
        Cond::Cmp { field, op, value: Literal::Null } => {
            let (expr, _) = table.field(field)?;
            match op {
                Op::Eq => format!("({expr} IS NULL)"),
                Op::Ne => format!("({expr} IS NOT NULL)"),
                _ => return Err(SfError::bad_request(codes::MALFORMED_QUERY, "null only compares with = or !=")),
            }
        }
        Cond::Cmp { field, op, value } => {
            let (expr, source) = table.field(field)?;
            bind(args, value)?;
            *n += 1;
            // Custom fields are JSON text: compare numbers and flags as text.
            let param = match (&source, value) {
                (FieldSource::Json(_), Literal::Num(_) | Literal::Bool(_)) => format!("${n}::text"),
                _ => format!("${n}"),
            };
            if let (true, Literal::Str(_)) = (case_insensitive(field), value) {
                format!("(lower({expr}) {} lower({param}))", op.as_str())
            } else {
                format!("({expr} {} {param})", op.as_str())
            }
        }
        Cond::In { field, values, negated } => {
            let (expr, _) = table.field(field)?;
            let lower = case_insensitive(field) && values.iter().all(|v| matches!(v, Literal::Str(_)));
            let expr = if lower { format!("lower({expr})") } else { expr };
            let mut params = Vec::new();
            for v in values {
                bind(args, v)?;
                *n += 1;
                params.push(if lower { format!("lower(${n})") } else { format!("${n}") });
            }
            format!("({expr} {}IN ({}))", if *negated { "NOT " } else { "" }, params.join(", "))
        }
    })
}

/// The ids a query selects, in its order (the query's snapshot).
pub async fn select_ids(pool: &PgPool, tenant: &str, table: &Table, q: &Query, include_deleted: bool) -> Result<Vec<String>, SfError> {
    let mut args = PgArguments::default();
    args.add(tenant.to_owned()).map_err(|e| SfError::internal(e.to_string()))?;
    let mut n = 1;
    let mut clauses = vec!["t.tenant = $1".to_owned()];
    if let Table::Custom { object } = table {
        args.add(object.clone()).map_err(|e| SfError::internal(e.to_string()))?;
        n += 1;
        clauses.push(format!("t.object_type = ${n}"));
    }
    if !include_deleted && table.has_deleted() {
        clauses.push("NOT t.is_deleted".into());
    }
    if let Some(c) = &q.filter {
        clauses.push(condition(table, c, &mut args, &mut n)?);
    }
    // Every selected field must exist, as in SOQL.
    for f in &q.fields {
        table.field(f)?;
    }
    let mut order: Vec<String> = Vec::new();
    for (field, o) in &q.order_by {
        let (expr, _) = table.field(field)?;
        order.push(format!("{expr} {}", if *o == Order::Desc { "DESC" } else { "ASC" }));
    }
    order.push("t.id".into());
    let limit = q.limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
    let sql =
        format!("SELECT t.id::text FROM {} t WHERE {} ORDER BY {}{limit}", table.sql_table(), clauses.join(" AND "), order.join(", "));
    let ids: Vec<String> = sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), args).fetch_all(pool).await.map_err(|e| match &e {
        sqlx::Error::Database(d) => SfError::bad_request(codes::MALFORMED_QUERY, format!("the query cannot run: {}", d.message())),
        _ => SfError::from(e),
    })?;
    Ok(ids)
}

/// SQL for a JSON object of row `t`'s `columns` (names from the schema,
/// never from a request), each value as `to_json(t)` gives it. A function
/// takes at most 100 arguments, so a wide selection reads the whole row.
pub(crate) fn row_of<S: AsRef<str>>(columns: &std::collections::BTreeSet<S>) -> String {
    if columns.len() > 50 {
        return "to_json(t)".to_owned();
    }
    let pairs: Vec<String> = columns.iter().map(|c| format!("'{0}', t.{0}", c.as_ref())).collect();
    format!("json_build_object({})", pairs.join(", "))
}

/// The rows of `ids`, in that order, as Salesforce records with `fields`.
pub async fn records(
    pool: &PgPool,
    tenant: &str,
    table: &Table,
    fields: &[String],
    ids: &[String],
    api_version: &str,
) -> Result<Vec<Map<String, Value>>, SfError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // Only the columns the fields come from: a change feed's light pages
    // select `Id` and `SystemModstamp` of thousands of rows.
    let mut columns = std::collections::BTreeSet::from(["id".to_owned()]);
    for f in fields {
        columns.insert(match table.field(f)?.1 {
            FieldSource::Column(c) | FieldSource::Stamp(c) => c,
            FieldSource::Json(_) => "fields".to_owned(),
        });
    }
    let row = row_of(&columns);
    let sql = format!("SELECT t.id::text, {row} FROM {} t WHERE t.tenant = $1 AND t.id::text = ANY($2)", table.sql_table());
    let rows: Vec<(String, Value)> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(ids).fetch_all(pool).await?;
    let by_id: std::collections::HashMap<String, Value> = rows.into_iter().collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(row) = by_id.get(id) else { continue };
        let mut rec = Map::new();
        rec.insert(
            "attributes".into(),
            json!({"type": table.name(), "url": format!("/services/data/{api_version}/sobjects/{}/{id}", table.name())}),
        );
        for f in fields {
            let (_, source) = table.field(f)?;
            let v = match source {
                FieldSource::Column(c) => row.get(&c).cloned().unwrap_or(Value::Null),
                FieldSource::Stamp(c) => {
                    row.get(&c).and_then(Value::as_str).and_then(time::parse).map_or(Value::Null, |t| Value::String(time::salesforce(t)))
                }
                FieldSource::Json(k) => row.get("fields").and_then(|d| d.get(&k)).cloned().unwrap_or(Value::Null),
            };
            // Ids keep the case the API gave them; the field name too.
            let name = if f.eq_ignore_ascii_case("Id") { "Id".to_owned() } else { f.clone() };
            rec.insert(name, v);
        }
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_holds_the_selected_columns_or_all_of_a_wide_selection() {
        let few = std::collections::BTreeSet::from(["modstamp", "id"]);
        assert_eq!(row_of(&few), "json_build_object('id', t.id, 'modstamp', t.modstamp)");
        let wide: std::collections::BTreeSet<String> = (0..51).map(|i| format!("c{i}")).collect();
        assert_eq!(row_of(&wide), "to_json(t)");
    }

    #[test]
    fn fields_resolve_to_columns_stamps_and_json() {
        let lead = Table::resolve("Lead").unwrap();
        assert_eq!(lead.field("Email").unwrap().0, "t.email");
        assert_eq!(lead.field("SystemModstamp").unwrap().0, "date_trunc('milliseconds', t.modstamp)");
        assert_eq!(lead.field(EXTERNAL_ID_FIELD).unwrap().0, "t.crmsync_id");
        assert!(lead.field("Nope__c").is_err());
        let custom = Table::resolve("Subscription__c").unwrap();
        assert_eq!(custom.field("Plan__c").unwrap().0, "(t.fields ->> 'Plan__c')");
        assert!(custom.field("x'; DROP TABLE y; --").is_err(), "custom field names are checked before they reach SQL");
        assert!(Table::resolve("Campaign").is_err());
    }
}
