//! Which of many sandbox change feeds have changes after their cursors,
//! asked in ONE statement for all of them (issue 29, "idle cost").
//!
//! A feed's own pending check ([`crate::store::changes_pending`]) is one
//! statement per feed; asking it of every feed of a thousand connections
//! at each safety poll is what made an idle deployment cost PostgreSQL
//! half a core. Here every feed is one index probe of its table's
//! `(tenant, mod_xid, id)` index inside a single statement (a branch per
//! table), so the cost is one round trip whatever the number of feeds,
//! and a few microseconds of index work per feed.
//!
//! The answer is exactly the feed's own: rows whose `(mod_xid, id)` is
//! past the cursor, committed, pageable yet or not (a row behind a
//! still-running older transaction counts as pending, so whoever asks
//! looks again later rather than forgetting it).

use std::collections::{BTreeMap, HashSet};

use crmsync_connector::{ConnectorError, Cursor};
use crmsync_domain::CrmObject;
use crmsync_domain::csql::CsqlRecordType;
use crmsync_domain::mirror::MirrorObject;
use sqlx::{AssertSqlSafe, PgPool};

use crate::schema::{ACCOUNT, CONTACT, CONTACT_ROLE, CUSTOM, LEAD, OPPORTUNITY, ObjectDef, PROSPECT};
use crate::store::{self, db_error};

/// The object a sandbox change feed reads.
#[derive(Debug, Clone, Copy)]
pub enum FeedObject<'a> {
    /// The MA's prospects.
    Prospects,
    /// The CRM's leads or contacts.
    Person(CrmObject),
    /// A CRM object the MA mirrors.
    Mirror(&'a MirrorObject),
    /// The CS platform's CSQLs of one kind.
    Csql(CsqlRecordType),
}

impl<'a> FeedObject<'a> {
    /// The table, and the custom type to filter on.
    fn def(self) -> Result<(&'static ObjectDef, Option<&'a str>), ConnectorError> {
        Ok(match self {
            FeedObject::Prospects => (&PROSPECT, None),
            FeedObject::Person(CrmObject::Lead) => (&LEAD, None),
            FeedObject::Person(CrmObject::Contact) => (&CONTACT, None),
            FeedObject::Person(other) => return Err(ConnectorError::Fatal(format!("{other} is not a person object"))),
            FeedObject::Mirror(MirrorObject::Account) => (&ACCOUNT, None),
            FeedObject::Mirror(MirrorObject::Opportunity) => (&OPPORTUNITY, None),
            FeedObject::Mirror(MirrorObject::ContactRole) => (&CONTACT_ROLE, None),
            FeedObject::Mirror(MirrorObject::Custom(name)) => (&CUSTOM, Some(name.as_str())),
            FeedObject::Csql(kind) => (crate::cs::def_of(kind), None),
        })
    }
}

/// One feed to ask about: its object, in its tenant, from its cursor.
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    pub object: FeedObject<'a>,
    pub tenant: &'a str,
    pub cursor: Option<&'a Cursor>,
}

/// The probes of one table, as the arrays its branch unnests.
#[derive(Default)]
struct Branch {
    def: Option<&'static ObjectDef>,
    custom: bool,
    tenants: Vec<String>,
    xids: Vec<String>,
    ids: Vec<String>,
    types: Vec<Option<String>>,
    index: Vec<i32>,
}

/// Whether each probe's feed has changes after its cursor, in the probes'
/// order, in one statement. A probe whose cursor is not a sandbox cursor
/// is answered `true`: reading the feed is what reports it, for that
/// connection alone, instead of failing the question for every feed.
pub async fn pending(pool: &PgPool, probes: &[Probe<'_>]) -> Result<Vec<bool>, ConnectorError> {
    let mut answer = vec![false; probes.len()];
    let mut branches: BTreeMap<&'static str, Branch> = BTreeMap::new();
    for (i, p) in probes.iter().enumerate() {
        let (def, custom) = p.object.def()?;
        let Ok(start) = store::start_of(def, p.cursor) else {
            answer[i] = true;
            continue;
        };
        let b = branches.entry(def.table).or_default();
        b.def = Some(def);
        b.custom = def.table == CUSTOM.table;
        b.tenants.push(p.tenant.to_owned());
        b.xids.push(start.xid);
        b.ids.push(start.id);
        b.types.push(custom.map(str::to_owned));
        b.index.push(i32::try_from(i).map_err(|_| ConnectorError::Fatal("too many feeds in one pending check".into()))?);
    }
    if branches.is_empty() {
        return Ok(answer);
    }
    let mut sql = Vec::with_capacity(branches.len());
    for (n, b) in branches.values().enumerate() {
        let def = b.def.expect("a branch has a table");
        let id_type = if def.numeric_id { "bigint" } else { "text" };
        let p = n * 5;
        // The same row comparison as a feed's own page and pending check,
        // so the probe is the index range scan they use.
        let custom = if b.custom { "AND t.object_type = p.object_type" } else { "" };
        sql.push(format!(
            "SELECT p.i FROM unnest(${a}::text[], ${b}::text[], ${c}::text[], ${d}::text[], ${e}::int[]) \
                AS p(tenant, xid, id, object_type, i) \
             WHERE EXISTS (SELECT 1 FROM {table} t WHERE t.tenant = p.tenant \
                AND (t.mod_xid, t.id) > (p.xid::xid8, p.id::{id_type}) {custom})",
            a = p + 1,
            b = p + 2,
            c = p + 3,
            d = p + 4,
            e = p + 5,
            table = def.table,
        ));
    }
    let sql = sql.join(" UNION ALL ");
    let mut query = sqlx::query_scalar::<_, i32>(AssertSqlSafe(sql));
    for b in branches.into_values() {
        query = query.bind(b.tenants).bind(b.xids).bind(b.ids).bind(b.types).bind(b.index);
    }
    let found: HashSet<i32> = query.fetch_all(pool).await.map_err(db_error)?.into_iter().collect();
    for i in found {
        if let Some(a) = usize::try_from(i).ok().and_then(|i| answer.get_mut(i)) {
            *a = true;
        }
    }
    Ok(answer)
}
