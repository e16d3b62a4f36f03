//! Dismissing sync errors (closing them without a retry), audited: what
//! `crmsync errors dismiss` and the console's sync-error page both call.

use crmsync_store::admin_audit::{self, Actor, NewEntry};
use crmsync_store::sync_errors::{self, Filter};
use sqlx::PgPool;

/// Dismisses the open errors `targets` names (ids, or a category, of one
/// connection or all); how many were closed. The admin audit log gets one
/// entry per connection touched, with the ids closed.
pub async fn dismiss(pool: &PgPool, actor: &Actor, targets: &Filter) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let open = Filter { status: Some("open".into()), ..targets.clone() };
    let found = sync_errors::find(&mut *tx, &open, None).await?;
    let ids: Vec<i64> = found.iter().map(|e| e.id).collect();
    let closed = sync_errors::close(&mut *tx, &ids, "dismissed", chrono::Utc::now()).await?;
    let mut by_connection: std::collections::BTreeMap<&str, Vec<i64>> = std::collections::BTreeMap::new();
    for e in &found {
        by_connection.entry(e.connection_id.as_str()).or_default().push(e.id);
    }
    for (connection, ids) in &by_connection {
        let entry = NewEntry {
            actor,
            connection_id: Some(connection),
            action: "errors.dismiss",
            target: targets.category.as_deref(),
            before: Some(serde_json::json!({ "open": ids })),
            after: Some(serde_json::json!({ "status": "dismissed" })),
        };
        admin_audit::record(&mut *tx, &entry).await?;
    }
    tx.commit().await?;
    Ok(closed)
}
