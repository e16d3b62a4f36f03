//! Linked prospect ↔ lead pairs in bulk, for benchmarks and scale tests: a
//! world of many tenants is seeded with one statement per table and
//! tenant (or per slice of a backlog too large for one transaction), not
//! one edit per record.

use super::{OpsError, Sandbox, System};

/// What to seed in a tenant.
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    /// Marks the records: emails `{tag}{n}.{tenant}@{domain}`, last names
    /// `{tag} {n}`.
    pub tag: &'a str,
    pub domain: &'a str,
    /// Prospects, each linked to one of the leads.
    pub pairs: i64,
    /// Leads (at least `pairs`); those past `pairs` have no prospect.
    pub people: i64,
}

impl Sandbox {
    /// Seeds `p.people` CRM leads and `p.pairs` prospects linked to them,
    /// in one transaction. Each lead holds a title its prospect lacks and
    /// each prospect a phone its lead lacks, so every pair needs a write
    /// each way to converge (job title = title, phone = phone).
    pub async fn seed_pairs(&self, p: &Pairs<'_>) -> Result<(), OpsError> {
        let (ma_admin, crm_admin) = (self.admin(System::Ma).await?, self.admin(System::Crm).await?);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO crm.leads (tenant, last_name, company, email, title, last_modified_by) \
             SELECT $1, $2 || ' ' || g, $2 || ' Co', $2 || g || '.' || $1 || '@' || $3, $2 || '-title-' || g, $4 \
             FROM generate_series(1, $5::bigint) g",
        )
        .bind(&self.tenant)
        .bind(p.tag)
        .bind(p.domain)
        .bind(&crm_admin)
        .bind(p.people.max(p.pairs))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO ma.prospects (tenant, email, last_name, company, phone, crm_lead_fid, last_modified_by) \
             SELECT $1, l.email, l.last_name, l.company, 'phone-' || l.title, l.id, $3 \
             FROM crm.leads l WHERE l.tenant = $1 AND l.email LIKE '%@' || $2 AND l.last_name LIKE $4 || ' %' \
             ORDER BY l.id LIMIT $5",
        )
        .bind(&self.tenant)
        .bind(p.domain)
        .bind(&ma_admin)
        .bind(p.tag)
        .bind(p.pairs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Seeds pairs `range` of `tag` (numbered as [`Sandbox::seed_pairs`]
    /// numbers them, every lead with its prospect) in one statement; a
    /// backlog too large for one transaction is seeded slice by slice, each
    /// slice a range. Returns the pairs written.
    pub async fn seed_pair_range(&self, tag: &str, domain: &str, range: std::ops::RangeInclusive<i64>) -> Result<u64, OpsError> {
        let (ma_admin, crm_admin) = (self.admin(System::Ma).await?, self.admin(System::Crm).await?);
        let done = sqlx::query(
            "WITH leads AS ( \
               INSERT INTO crm.leads (tenant, last_name, company, email, title, last_modified_by) \
               SELECT $1, $2 || ' ' || g, $2 || ' Co', $2 || g || '.' || $1 || '@' || $3, $2 || '-title-' || g, $4 \
               FROM generate_series($6::bigint, $7::bigint) g \
               RETURNING id, email, last_name, company, title) \
             INSERT INTO ma.prospects (tenant, email, last_name, company, phone, crm_lead_fid, last_modified_by) \
             SELECT $1, email, last_name, company, 'phone-' || title, id, $5 FROM leads",
        )
        .bind(&self.tenant)
        .bind(tag)
        .bind(domain)
        .bind(&crm_admin)
        .bind(&ma_admin)
        .bind(*range.start())
        .bind(*range.end())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
