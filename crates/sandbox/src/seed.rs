//! A realistic, reproducible data set for the demo, the tests and the
//! benchmarks.
//!
//! It holds what a real MA and CRM hold after years of use: prospects tied to
//! their leads or contacts by CRM id (in 18-character, 15-character and
//! case-lost forms), prospects that only share an email (in other case, with
//! stray spaces), new prospects waiting for an assigned user, prospects whose
//! user can own nothing, CRM records the MA has never heard of, two CRM records
//! with one email, malformed emails and ids, and conflicting edits made on both
//! sides after the records last agreed. The same seed gives the same data.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::ops::{OpsError, Sandbox, System};

/// How much to generate.
#[derive(Debug, Clone, Copy)]
pub struct SeedOptions {
    /// 1.0 is about 4,000 prospects, 3,500 leads and 1,500 contacts.
    pub scale: f64,
    pub seed: u64,
}

impl Default for SeedOptions {
    fn default() -> Self {
        SeedOptions { scale: 1.0, seed: 42 }
    }
}

/// What was generated, by the case each record exercises.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SeedSummary {
    pub accounts: usize,
    pub contacts: usize,
    pub leads: usize,
    pub prospects: usize,
    /// Prospects that carry their CRM record's id.
    pub linked_by_id: usize,
    /// ... of which the id is stored in its 15-character form.
    pub ids_15_char: usize,
    /// Prospects that share only an email with a CRM record.
    pub linked_by_email: usize,
    /// New prospects with an assigned user whose CRM user will own a lead.
    pub to_create: usize,
    /// ... of which lack a company, which a lead requires.
    pub to_create_without_company: usize,
    /// New prospects with no assigned user.
    pub unassigned: usize,
    /// Assigned to an MA user with no CRM user, or an inactive one.
    pub unownable: usize,
    /// Prospects with a malformed email, a malformed or dangling CRM id, or an
    /// email two CRM records share.
    pub malformed: usize,
    pub ambiguous: usize,
    /// CRM leads with no prospect (auto-create is off by default).
    pub crm_only: usize,
    /// Linked pairs edited on both sides since they last agreed.
    pub conflicting_edits: usize,
    pub opportunities: usize,
    /// Opportunities with at least one contact role.
    pub opportunities_with_roles: usize,
    pub contact_roles: usize,
    /// `Subscription__c` custom object records, tied to contacts.
    pub subscriptions: usize,
}

/// The custom object the seed fills and the demo declares (R6).
pub const SUBSCRIPTION: &str = "Subscription__c";

const FIRST: &[&str] = &[
    "Haruto", "Yui", "Sota", "Aoi", "Ren", "Hina", "Yuto", "Mei", "Kaito", "Sakura", "Emma", "Liam", "Olivia", "Noah", "Ava", "Lucas",
    "Mia", "Leo", "Chloe", "Arjun", "Priya", "Wei", "Li", "Mateo", "Sofia", "Jonas", "Lena", "Omar", "Amara", "Ines",
];
const LAST: &[&str] = &[
    "Sato",
    "Suzuki",
    "Takahashi",
    "Tanaka",
    "Watanabe",
    "Ito",
    "Yamamoto",
    "Nakamura",
    "Kobayashi",
    "Kato",
    "Smith",
    "Johnson",
    "Brown",
    "Garcia",
    "Miller",
    "Davis",
    "Martin",
    "Muller",
    "Schmidt",
    "Rossi",
    "Dubois",
    "Silva",
    "Kim",
    "Patel",
    "Chen",
    "Nguyen",
    "Okafor",
    "Haddad",
    "Kowalski",
    "Jansen",
];
const COMPANIES: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Aperture",
    "Vandelay",
    "Sakura Systems",
    "Fuji Logistics",
    "Kansai Foods",
    "Nihon Retail",
    "Tokai Energy",
    "Hokuto Labs",
    "Minato Capital",
    "Shibuya Digital",
];
const TITLES: &[&str] = &[
    "CEO",
    "CTO",
    "CFO",
    "VP Sales",
    "VP Marketing",
    "Head of IT",
    "Marketing Manager",
    "Sales Manager",
    "Engineer",
    "Analyst",
    "Procurement Lead",
    "Operations Director",
];
const CITIES: &[(&str, &str)] = &[
    ("Tokyo", "Japan"),
    ("Osaka", "Japan"),
    ("Nagoya", "Japan"),
    ("Fukuoka", "Japan"),
    ("Sapporo", "Japan"),
    ("London", "United Kingdom"),
    ("Berlin", "Germany"),
    ("Paris", "France"),
    ("New York", "United States"),
    ("San Francisco", "United States"),
    ("Singapore", "Singapore"),
    ("Sydney", "Australia"),
];

fn scaled(base: usize, scale: f64) -> usize {
    ((base as f64) * scale).round().max(1.0) as usize
}

fn domain(company: &str) -> String {
    format!("{}.example", company.to_lowercase().replace(' ', "-"))
}

fn phone(rng: &mut StdRng) -> String {
    format!("+81-3-{:04}-{:04}", rng.random_range(0..10_000), rng.random_range(0..10_000))
}

/// A person's generated attributes.
#[derive(Debug, Clone)]
struct Person {
    first: String,
    last: String,
    email: String,
    company: String,
    title: String,
    city: String,
    country: String,
    phone: String,
}

fn person(rng: &mut StdRng, n: usize) -> Person {
    let first = (*FIRST.choose(rng).expect("non-empty")).to_owned();
    let last = (*LAST.choose(rng).expect("non-empty")).to_owned();
    let company = (*COMPANIES.choose(rng).expect("non-empty")).to_owned();
    let (city, country) = *CITIES.choose(rng).expect("non-empty");
    Person {
        email: format!("{}.{}.{n}@{}", first.to_lowercase(), last.to_lowercase(), domain(&company)),
        title: (*TITLES.choose(rng).expect("non-empty")).to_owned(),
        city: city.to_owned(),
        country: country.to_owned(),
        phone: phone(rng),
        first,
        last,
        company,
    }
}

/// Inserts rows (column-named JSON objects) in bulk; returns (id, email) per
/// row.
async fn insert_many(pool: &PgPool, table: &str, rows: &[Value]) -> Result<Vec<(String, Option<String>)>, OpsError> {
    let Some(first) = rows.first().and_then(Value::as_object) else {
        return Ok(vec![]);
    };
    // Every row of one call has the same keys.
    let cols: Vec<&str> = first.keys().map(String::as_str).collect();
    let list = cols.join(", ");
    let rlist = cols.iter().map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "INSERT INTO {table} AS t ({list}) SELECT {rlist} FROM jsonb_populate_recordset(NULL::{table}, $1) r \
         RETURNING t.id::text AS id, to_jsonb(t) ->> 'email' AS email"
    );
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(2000) {
        let done = sqlx::query(AssertSqlSafe(sql.clone())).bind(Value::Array(chunk.to_vec())).fetch_all(pool).await?;
        out.extend(done.into_iter().map(|r| (r.get::<String, _>("id"), r.get::<Option<String>, _>("email"))));
    }
    Ok(out)
}

/// Applies per-row patches `{"id": ..., "patch": {...}}` as `actor`.
async fn update_many(pool: &PgPool, table: &str, numeric_id: bool, actor: &str, edits: &[Value]) -> Result<(), OpsError> {
    let cast = if numeric_id { "bigint" } else { "text" };
    // Only the columns the patches touch are set; the rest keep their values.
    let mut cols: Vec<String> =
        edits.iter().filter_map(|e| e.get("patch").and_then(Value::as_object)).flat_map(|p| p.keys().cloned()).collect();
    cols.sort();
    cols.dedup();
    if cols.is_empty() {
        return Ok(());
    }
    let list = cols.join(", ");
    let rlist = cols.iter().map(|c| format!("p.{c}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "UPDATE {table} t SET ({list}, last_modified_by) = (SELECT {rlist}, $2 FROM jsonb_populate_record(t, e.patch) p) \
         FROM (SELECT (x->>'id')::{cast} AS id, x->'patch' AS patch FROM jsonb_array_elements($1) x) e WHERE t.id = e.id"
    );
    for chunk in edits.chunks(2000) {
        sqlx::query(AssertSqlSafe(sql.clone())).bind(Value::Array(chunk.to_vec())).bind(actor).execute(pool).await?;
    }
    Ok(())
}

/// A 15-character id, or a case-lost 18-character one: what older
/// integrations and spreadsheets leave in the MA.
fn id_variant(rng: &mut StdRng, id18: &str) -> (String, bool) {
    match rng.random_range(0..10) {
        0..=2 => (id18[..15].to_owned(), true),
        3 => (id18.to_lowercase(), false),
        _ => (id18.to_owned(), false),
    }
}

/// Fills `sandbox`'s tenant with the data set. Refuses a tenant that already
/// holds prospects: seeding twice would double everything.
pub async fn seed(sandbox: &Sandbox, opts: &SeedOptions) -> Result<SeedSummary, OpsError> {
    let pool = sandbox.pool();
    let tenant = sandbox.tenant().to_owned();
    sandbox.init().await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM ma.prospects WHERE tenant = $1").bind(&tenant).fetch_one(pool).await?;
    if existing > 0 {
        return Err(OpsError::Invalid(format!(
            "tenant {tenant:?} already holds {existing} prospects; seed an empty tenant (crmsync sandbox reset)"
        )));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let s = opts.scale;
    let mut sum = SeedSummary::default();
    let ma_admin = sandbox.admin(System::Ma).await?;
    let crm_admin = sandbox.admin(System::Crm).await?;

    // Users: sales reps in both systems, plus the awkward ones.
    let mut crm_sales = Vec::new();
    let mut ma_sales = Vec::new();
    for (i, name) in ["Aiko Mori", "Ben Carter", "Chika Ono", "Dan Weber", "Eri Kondo", "Farah Aziz"].iter().enumerate() {
        let email = format!("{}@{tenant}.sales.example", name.to_lowercase().replace(' ', "."));
        let crm_id = sandbox.create_crm_user(name, &email, true, true).await?;
        // Some MA users store their CRM user id in the 15-character form.
        let stored = if i % 2 == 0 { crm_id[..15].to_owned() } else { crm_id.clone() };
        let (first, last) = name.split_once(' ').expect("two names");
        ma_sales.push(sandbox.create_ma_user(&email, first, last, Some(&stored)).await?);
        crm_sales.push(crm_id);
    }
    let ma_no_crm = sandbox.create_ma_user(&format!("intern@{tenant}.marketing.example"), "Marketing", "Intern", None).await?;
    let inactive_crm = sandbox.create_crm_user("Gone Away", &format!("gone@{tenant}.sales.example"), false, false).await?;
    let ma_inactive = sandbox.create_ma_user(&format!("gone@{tenant}.sales.example"), "Gone", "Away", Some(&inactive_crm)).await?;

    // Accounts and the CRM's people.
    let n_accounts = scaled(300, s);
    let accounts: Vec<Value> = (0..n_accounts)
        .map(|i| {
            let company = COMPANIES[i % COMPANIES.len()];
            let (city, country) = *CITIES.choose(&mut rng).expect("non-empty");
            json!({"tenant": tenant, "name": format!("{company} {}", i / COMPANIES.len() + 1), "industry": "Technology",
                   "website": format!("https://{}", domain(company)), "billing_city": city, "billing_country": country,
                   "owner_id": crm_sales.choose(&mut rng), "last_modified_by": crm_admin})
        })
        .collect();
    let account_ids: Vec<String> = insert_many(pool, "crm.accounts", &accounts).await?.into_iter().map(|(id, _)| id).collect();
    sum.accounts = account_ids.len();

    let mut serial = 0usize;
    let mut next_person = |rng: &mut StdRng| {
        serial += 1;
        person(rng, serial)
    };
    let contact_doc = |p: &Person, rng: &mut StdRng| {
        json!({"tenant": tenant, "account_id": account_ids.choose(rng), "first_name": p.first, "last_name": p.last, "email": p.email,
               "title": p.title, "phone": p.phone, "mailing_city": p.city, "mailing_country": p.country,
               "owner_id": crm_sales.choose(rng), "last_modified_by": crm_admin})
    };
    let lead_doc = |p: &Person, rng: &mut StdRng| {
        json!({"tenant": tenant, "first_name": p.first, "last_name": p.last, "email": p.email, "company": p.company,
               "title": p.title, "phone": p.phone, "city": p.city, "country": p.country,
               "owner_id": crm_sales.choose(rng), "last_modified_by": crm_admin})
    };
    let n_contacts = scaled(1500, s);
    let n_leads = scaled(3500, s);
    let contact_people: Vec<Person> = (0..n_contacts).map(|_| next_person(&mut rng)).collect();
    let lead_people: Vec<Person> = (0..n_leads).map(|_| next_person(&mut rng)).collect();
    let contacts = insert_many(pool, "crm.contacts", &contact_people.iter().map(|p| contact_doc(p, &mut rng)).collect::<Vec<_>>()).await?;
    let leads = insert_many(pool, "crm.leads", &lead_people.iter().map(|p| lead_doc(p, &mut rng)).collect::<Vec<_>>()).await?;
    sum.contacts = contacts.len();
    sum.leads = leads.len();
    let person_of: HashMap<String, Person> =
        contact_people.iter().chain(lead_people.iter()).map(|p| (p.email.clone(), p.clone())).collect();

    // Prospects. Each category takes its own slice of the CRM's people.
    let prospect_doc = |p: &Person, email: &str, rng: &mut StdRng| {
        let grade = ["A", "B", "C", "D"].choose(rng).copied();
        json!({"tenant": tenant, "email": email, "first_name": p.first, "last_name": p.last, "company": p.company,
               "job_title": p.title, "phone": p.phone, "city": p.city, "country": p.country,
               "score": rng.random_range(0..200), "grade": grade,
               "last_modified_by": ma_admin})
    };
    let mut prospects: Vec<Value> = Vec::new();
    let crm_people: Vec<(&str, &(String, Option<String>))> =
        contacts.iter().map(|c| ("contact", c)).chain(leads.iter().map(|l| ("lead", l))).collect();
    let n_by_id = scaled(1400, s).min(crm_people.len());
    let n_by_email = scaled(600, s).min(crm_people.len() - n_by_id);
    // Contacts first, then leads: the by-id slice covers both.
    let mut order: Vec<usize> = (0..crm_people.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut linked: Vec<(usize, String)> = Vec::new(); // (index into prospects, crm id)
    for &i in &order[..n_by_id] {
        let (kind, (id, email)) = crm_people[i];
        let email = email.clone().unwrap_or_default();
        let mut doc = prospect_doc(&person_of[&email], &email, &mut rng);
        let (stored, short) = id_variant(&mut rng, id);
        doc[if kind == "contact" { "crm_contact_fid" } else { "crm_lead_fid" }] = json!(stored);
        sum.ids_15_char += usize::from(short);
        doc["assigned_user_id"] = json!(ma_sales.choose(&mut rng));
        linked.push((prospects.len(), id.clone()));
        prospects.push(doc);
    }
    sum.linked_by_id = n_by_id;
    for &i in &order[n_by_id..n_by_id + n_by_email] {
        let (_, (id, email)) = crm_people[i];
        let email = email.clone().unwrap_or_default();
        // The same address, as another system spelled it.
        let spelled = match rng.random_range(0..3) {
            0 => email.to_uppercase(),
            1 => format!("  {email} "),
            _ => email.clone(),
        };
        let mut doc = prospect_doc(&person_of[&email], &spelled, &mut rng);
        if rng.random_bool(0.5) {
            doc["assigned_user_id"] = json!(ma_sales.choose(&mut rng));
        }
        linked.push((prospects.len(), id.clone()));
        prospects.push(doc);
    }
    sum.linked_by_email = n_by_email;
    sum.crm_only = crm_people.len() - n_by_id - n_by_email;

    // New prospects: assigned (a lead will be created), or waiting.
    for i in 0..scaled(500, s) {
        let p = next_person(&mut rng);
        let mut doc = prospect_doc(&p, &p.email, &mut rng);
        doc["assigned_user_id"] = json!(ma_sales.choose(&mut rng));
        if i % 50 == 7 {
            doc["company"] = Value::Null;
            sum.to_create_without_company += 1;
        }
        prospects.push(doc);
        sum.to_create += 1;
    }
    for _ in 0..scaled(400, s) {
        let p = next_person(&mut rng);
        prospects.push(prospect_doc(&p, &p.email, &mut rng));
        sum.unassigned += 1;
    }
    for i in 0..scaled(12, s) {
        let p = next_person(&mut rng);
        let mut doc = prospect_doc(&p, &p.email, &mut rng);
        doc["assigned_user_id"] = json!(if i % 3 == 0 { ma_inactive } else { ma_no_crm });
        prospects.push(doc);
        sum.unownable += 1;
    }

    // Bad input.
    for (i, bad) in ["not-an-email", "jane(at)example.com", "two@@example.com", "spaces in@example.com", "nodot@localhost"]
        .iter()
        .cycle()
        .take(scaled(15, s))
        .enumerate()
    {
        let p = next_person(&mut rng);
        let mut doc = prospect_doc(&p, &format!("{i}{bad}"), &mut rng);
        doc["assigned_user_id"] = json!(ma_sales.choose(&mut rng));
        prospects.push(doc);
        sum.malformed += 1;
    }
    for (i, bad) in ["00Q123", "00Q5g0000!abcde", "000000000000000", "003XYZ"].iter().cycle().take(scaled(10, s)).enumerate() {
        let p = next_person(&mut rng);
        let mut doc = prospect_doc(&p, &p.email, &mut rng);
        doc[if i % 2 == 0 { "crm_lead_fid" } else { "crm_contact_fid" }] = json!(bad);
        prospects.push(doc);
        sum.malformed += 1;
    }
    for _ in 0..scaled(5, s) {
        // A well-formed id of a record that does not exist.
        let p = next_person(&mut rng);
        let mut doc = prospect_doc(&p, &p.email, &mut rng);
        doc["crm_lead_fid"] = json!("00Q5g00000ZZZZZ");
        prospects.push(doc);
        sum.malformed += 1;
    }
    // Two CRM records with one email, and a prospect with that email.
    let n_ambiguous = scaled(10, s);
    let dup_people: Vec<Person> = (0..n_ambiguous).map(|_| next_person(&mut rng)).collect();
    insert_many(pool, "crm.leads", &dup_people.iter().map(|p| lead_doc(p, &mut rng)).collect::<Vec<_>>()).await?;
    insert_many(pool, "crm.contacts", &dup_people.iter().map(|p| contact_doc(p, &mut rng)).collect::<Vec<_>>()).await?;
    sum.leads += n_ambiguous;
    sum.contacts += n_ambiguous;
    for p in &dup_people {
        let mut doc = prospect_doc(p, &p.email, &mut rng);
        doc["assigned_user_id"] = json!(ma_sales.choose(&mut rng));
        prospects.push(doc);
    }
    sum.ambiguous = n_ambiguous;

    // Every prospect row needs the same keys for the bulk insert.
    let keys = ["assigned_user_id", "crm_lead_fid", "crm_contact_fid", "company"];
    for doc in &mut prospects {
        for k in keys {
            if doc.get(k).is_none() {
                doc[k] = Value::Null;
            }
        }
    }
    let inserted = insert_many(pool, "ma.prospects", &prospects).await?;
    sum.prospects = inserted.len();

    // Opportunities on the accounts: most with contact roles (on synced
    // contacts or not), some with none at all.
    let contact_ids: Vec<&String> = contacts.iter().map(|(id, _)| id).collect();
    let stages = ["Prospecting", "Qualification", "Proposal", "Negotiation", "Closed Won", "Closed Lost"];
    let opportunities: Vec<Value> = (0..scaled(250, s))
        .map(|i| {
            let stage = stages[i % stages.len()];
            let close = format!("2027-0{}-15", 1 + i % 9);
            json!({"tenant": tenant, "name": format!("Deal {}", i + 1), "account_id": account_ids.choose(&mut rng),
                   "stage_name": stage, "amount": rng.random_range(1..500) * 1000, "close_date": close,
                   "is_closed": stage.starts_with("Closed"), "is_won": stage == "Closed Won",
                   "owner_id": crm_sales.choose(&mut rng), "last_modified_by": crm_admin})
        })
        .collect();
    let opportunity_ids: Vec<String> =
        insert_many(pool, "crm.opportunities", &opportunities).await?.into_iter().map(|(id, _)| id).collect();
    sum.opportunities = opportunity_ids.len();
    let mut roles: Vec<Value> = Vec::new();
    for (i, opp) in opportunity_ids.iter().enumerate() {
        if i % 5 == 4 {
            continue; // no contact role: not visible in the MA at all
        }
        sum.opportunities_with_roles += 1;
        for (k, role) in ["Decision Maker", "Evaluator", "Influencer"].iter().take(1 + i % 3).enumerate() {
            roles.push(json!({"tenant": tenant, "opportunity_id": opp, "contact_id": contact_ids.choose(&mut rng),
                              "role": role, "is_primary": k == 0, "last_modified_by": crm_admin}));
        }
    }
    sum.contact_roles = insert_many(pool, "crm.opportunity_contact_roles", &roles).await?.len();
    let plans = ["Bronze", "Silver", "Gold", "Platinum"];
    let subscriptions: Vec<Value> = (0..scaled(150, s))
        .map(|i| {
            let plan = plans[i % plans.len()];
            json!({"tenant": tenant, "object_type": SUBSCRIPTION, "last_modified_by": crm_admin,
                   "fields": {"Plan__c": plan, "Seats__c": rng.random_range(1..200), "Contact__c": contact_ids.choose(&mut rng),
                              "Internal_Notes__c": "not mirrored"}})
        })
        .collect();
    sum.subscriptions = insert_many(pool, "crm.custom_records", &subscriptions).await?.len();

    // Conflicting edits, after the pairs last agreed: a CRM round, an MA
    // round, another CRM round, over overlapping thirds of the linked pairs.
    let mut crm_edits: Vec<(String, Value, &str)> = Vec::new();
    let mut ma_edits: Vec<Value> = Vec::new();
    let mut late_crm: Vec<(String, Value, &str)> = Vec::new();
    for (k, (idx, crm_id)) in linked.iter().enumerate() {
        let table = if crm_id.starts_with("003") { "crm.contacts" } else { "crm.leads" };
        let city_col = if table == "crm.contacts" { "mailing_city" } else { "city" };
        let (city, _) = *CITIES.choose(&mut rng).expect("non-empty");
        match k % 6 {
            0 => crm_edits.push((crm_id.clone(), json!({"title": TITLES.choose(&mut rng), city_col: city}), table)),
            1 => ma_edits.push(json!({"id": inserted[*idx].0, "patch": {"job_title": TITLES.choose(&mut rng), "phone": phone(&mut rng)}})),
            2 => {
                crm_edits.push((crm_id.clone(), json!({"title": TITLES.choose(&mut rng), "phone": phone(&mut rng)}), table));
                ma_edits.push(json!({"id": inserted[*idx].0, "patch": {"job_title": TITLES.choose(&mut rng), "phone": phone(&mut rng), "city": city}}));
                sum.conflicting_edits += 1;
            }
            3 => {
                ma_edits.push(
                    json!({"id": inserted[*idx].0, "patch": {"job_title": TITLES.choose(&mut rng), "last_name": LAST.choose(&mut rng)}}),
                );
                late_crm.push((crm_id.clone(), json!({"title": TITLES.choose(&mut rng), "last_name": LAST.choose(&mut rng)}), table));
                sum.conflicting_edits += 1;
            }
            _ => {}
        }
    }
    let crm_round = |edits: &[(String, Value, &str)], table: &str| -> Vec<Value> {
        edits.iter().filter(|e| e.2 == table).map(|(id, patch, _)| json!({"id": id, "patch": patch})).collect()
    };
    for table in ["crm.leads", "crm.contacts"] {
        update_many(pool, table, false, &crm_sales[0], &crm_round(&crm_edits, table)).await?;
    }
    update_many(pool, "ma.prospects", true, &ma_sales[1].to_string(), &ma_edits).await?;
    for table in ["crm.leads", "crm.contacts"] {
        update_many(pool, table, false, &crm_sales[2], &crm_round(&late_crm, table)).await?;
    }
    Ok(sum)
}

/// Deletes every record of the tenant (users stay).
pub async fn reset(sandbox: &Sandbox) -> Result<(), OpsError> {
    let pool = sandbox.pool();
    for table in [
        "cs.lead_records",
        "cs.opportunity_records",
        "ma.opportunities",
        "ma.custom_object_records",
        "crm.custom_records",
        "crm.opportunity_contact_roles",
        "crm.opportunities",
        "ma.prospects",
        "ma.prospect_accounts",
        "crm.leads",
        "crm.contacts",
        "crm.accounts",
    ] {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE tenant = $1"))).bind(sandbox.tenant()).execute(pool).await?;
    }
    Ok(())
}
