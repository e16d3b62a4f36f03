//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "crmsync", version, about = "Keeps a marketing-automation system, a CRM and a customer-success platform in sync.")]
pub struct Cli {
    /// Configuration file (TOML). `CRMSYNC_*` environment variables override it.
    #[arg(long, global = true, env = "CRMSYNC_CONFIG")]
    pub config: Option<PathBuf>,

    /// Show personal data (email addresses) in clear in sync errors,
    /// dead-lettered messages and reports; they are redacted by default.
    /// The sandbox's own viewer (`sandbox show`, `list`) always shows its
    /// records as they are.
    #[arg(long, global = true)]
    pub show_pii: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the producer tier: detect changes and publish them.
    Producer,
    /// Run the matcher tier: resolve identities, apply the creation rules.
    Matcher,
    /// Run the applier tier: apply field behaviours and write the targets.
    Applier,
    /// Apply the engine's and the sandbox's database migrations.
    Migrate {
        /// Then store identity states in this form from now on. `text` only
        /// once every replica runs this release and you will not roll back:
        /// the previous release reads `jsonb` alone. A database this release
        /// creates starts at `text`.
        #[arg(long, value_enum)]
        identity_state: Option<IdentityStateForm>,
    },
    /// Show, per connection, what is in sync, pending, queued and failing.
    /// Read-only: answers within the configured timeouts, naming what it
    /// could not reach (then it exits 1), and declares nothing.
    Status(ViewArgs),
    /// Check both sides of every linked identity against each other. Exits
    /// 1 on a real mismatch; pairs whose change is still waiting in the
    /// batch lane are listed apart.
    Report(ViewArgs),
    /// Wait until the pipeline is idle: every change published is finished,
    /// no work queue holds a message, no feed has unread changes. Exits 1 on
    /// the timeout, saying what was still busy; shows progress on a terminal.
    WaitIdle(WaitIdleArgs),
    /// Work the sync-error queue: list, show, retry, dismiss, export; inspect
    /// and replay dead-lettered messages. Without a subcommand: list.
    Errors {
        #[command(subcommand)]
        cmd: Option<ErrorsCmd>,
        #[command(flatten)]
        filter: ErrorFilter,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Inspect and change connections.
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Work on one record: sync it now.
    #[command(subcommand)]
    Records(RecordsCmd),
    /// Work with the sandbox systems by hand.
    #[command(subcommand)]
    Sandbox(SandboxCmd),
    /// Run the demo: fresh database, seeded sandbox, all tiers, a report.
    Demo(DemoArgs),
    /// Benchmarks that print figures (nothing is asserted).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// The admin console: a web UI and JSON API on `console.listen`
    /// (127.0.0.1:8790 by default), and its users. Without a subcommand:
    /// serve.
    Console {
        #[command(subcommand)]
        cmd: Option<ConsoleCmd>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsoleCmd {
    /// Serve the console until SIGTERM (any number of replicas: their
    /// state is in PostgreSQL).
    Serve,
    /// Add a console user. The password is read from standard input (its
    /// first line) or from `--password-file`, never from the command line,
    /// where other users of the machine could read it.
    AddUser {
        name: String,
        /// admin changes settings; viewer sees everything and changes nothing.
        #[arg(long, value_enum)]
        role: ConsoleRole,
        /// Read the password from this file (its first line) instead of
        /// standard input.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Add an API token for a console user (`Authorization: Bearer` on the
    /// JSON API); printed this once, only its digest is kept.
    AddToken {
        /// The user the token acts as, with that user's role.
        user: String,
        /// What the token is for (shown in the audit log).
        #[arg(long, default_value = "api")]
        name: String,
    },
    /// Set a console user's password (read as `add-user` reads it); the
    /// user's sessions end and any lockout is lifted.
    SetPassword {
        name: String,
        /// Read the password from this file (its first line) instead of
        /// standard input.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Remove a console user, with its sessions and API tokens (its
    /// entries in the audit log stay).
    RemoveUser { name: String },
    /// Revoke a user's API tokens of this name: they open nothing from
    /// their next request on.
    RevokeToken {
        user: String,
        #[arg(long, default_value = "api")]
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsoleRole {
    Admin,
    Viewer,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Every scenario (ceiling, backfill, steady lane, cost), directly and
    /// over HTTP: figures printed and written as JSON, Markdown and SVG.
    Suite(crate::bench::suite::SuiteArgs),
    /// The batch budget with 1, 2 and 3 applier replicas: budget used, worst
    /// one-second overshoot, ETA error.
    Budget {
        #[arg(long, default_value_t = 600)]
        records: i64,
        /// The budget in records a second (the default 12,000/hour is 3.3/s).
        #[arg(long, default_value_t = 50)]
        per_second: u32,
        /// Also write the figures as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The immediate lane under a steady offered load: latency from the MA
    /// commit to the CRM commit, p50/p95/p99/max, per rate.
    Latency {
        /// Offered edits a second; several runs when repeated.
        #[arg(long = "rate", default_values_t = [100.0, 500.0])]
        rates: Vec<f64>,
        /// How long each rate is offered.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Linked pairs the edits go round.
        #[arg(long, default_value_t = 2000)]
        pairs: i64,
        /// The side the edits are made on.
        #[arg(long, value_enum, default_value_t = crate::bench::latency::Direction::MaToCrm)]
        direction: crate::bench::latency::Direction,
        /// How the tiers reach the sandbox systems.
        #[arg(long, value_enum, default_value_t = crate::bench::mode::Mode::Direct)]
        mode: crate::bench::mode::Mode,
        /// Also write the figures as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The admin console's pages at scale (100,000 identities, 1,000,000
    /// audit entries by default): p50/p95/max per page, as HTML and JSON.
    Console(crate::bench::console::ConsoleArgs),
    /// Many small connections on one deployment (issue 29): initial sync
    /// against the same records in one connection, idle CPU, memory,
    /// batch lanes consumed, and how long the read-only commands take.
    Connections(crate::bench::connections::ConnectionsArgs),
    /// RabbitMQ's own two-hop ceiling: persistent, confirmed messages through
    /// two quorum queues with consumers that do no work.
    Ceiling {
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Bytes per message (a one-record change message is about 1 KB).
        #[arg(long, default_value_t = 1024)]
        bytes: usize,
        /// Unacked messages per consumer.
        #[arg(long, default_value_t = 64)]
        prefetch: u16,
        /// Also write the figures as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Which sync errors a command works on.
#[derive(Debug, Clone, Args)]
pub struct ErrorFilter {
    /// Only this connection's.
    #[arg(long, short = 'c')]
    pub connection: Option<String>,
    /// Only this category (`invalid_email`, `validation_rule`...).
    #[arg(long)]
    pub category: Option<String>,
    /// Only this object (`prospect`, `lead`, `contact`, `message`...).
    #[arg(long)]
    pub object: Option<String>,
    /// Only this record (its id in its source).
    #[arg(long)]
    pub record: Option<String>,
    /// Only errors in this state.
    #[arg(long, value_enum, default_value_t = ErrorStatus::Open)]
    pub status: ErrorStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ErrorStatus {
    Open,
    Retried,
    Dismissed,
    Resolved,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    Match,
    Apply,
}

#[derive(Debug, Subcommand)]
pub enum ErrorsCmd {
    /// List sync errors, with a count per category.
    List {
        #[command(flatten)]
        filter: ErrorFilter,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything kept about one error: full reason, payload, times.
    Show { id: i64 },
    /// Send records through the pipeline again: their current state is read
    /// from the source and published to the matcher. Give ids, or a category.
    Retry {
        ids: Vec<i64>,
        #[arg(long, required_unless_present = "ids")]
        category: Option<String>,
        #[arg(long, short = 'c')]
        connection: Option<String>,
    },
    /// Close errors without retrying them. Give ids, or a category.
    Dismiss {
        ids: Vec<i64>,
        #[arg(long, required_unless_present = "ids")]
        category: Option<String>,
        #[arg(long, short = 'c')]
        connection: Option<String>,
    },
    /// Write errors as CSV or JSON lines.
    Export {
        #[command(flatten)]
        filter: ErrorFilter,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// The file to write (standard output when omitted).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// List the messages in the dead-letter queues.
    DeadLetters {
        /// Only this stage's dead-letter queue.
        #[arg(long, value_enum)]
        stage: Option<StageArg>,
        /// Show each message's body, not only a preview (emails redacted
        /// unless --show-pii).
        #[arg(long)]
        full: bool,
    },
    /// Put dead-lettered messages back on their work queue.
    Replay {
        #[arg(long, value_enum)]
        stage: Option<StageArg>,
        /// The message ids to replay.
        #[arg(long = "message", required_unless_present = "all")]
        messages: Vec<String>,
        /// Every dead-lettered message.
        #[arg(long)]
        all: bool,
    },
}

/// How identity states are stored (migration 0007).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdentityStateForm {
    /// The `fields` jsonb column, which the previous release reads.
    Jsonb,
    /// JSON text in `fields_text`: neither parsed nor printed by PostgreSQL.
    Text,
}

#[derive(Debug, Args)]
pub struct ViewArgs {
    /// The connection (all of them when omitted).
    #[arg(long, short = 'c')]
    pub connection: Option<String>,
    /// One JSON document instead of text (its shape is in the README).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WaitIdleArgs {
    /// The connection (all of them when omitted).
    #[arg(long, short = 'c')]
    pub connection: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// The keys `connection set` takes, each with what it takes, from the one
/// list the settings themselves check.
fn setting_keys() -> clap::builder::PossibleValuesParser {
    use clap::builder::PossibleValue;
    clap::builder::PossibleValuesParser::new(crmsync_domain::settings::KEYS.iter().map(|(key, help)| PossibleValue::new(*key).help(*help)))
}

#[derive(Debug, Subcommand)]
pub enum ConnectionCmd {
    /// List connections.
    List,
    /// Show a connection's settings.
    Show { id: String },
    /// Create a connection to sandbox tenants.
    Create {
        id: String,
        #[arg(long, default_value = "default")]
        ma_tenant: String,
        #[arg(long, default_value = "default")]
        crm_tenant: String,
    },
    /// Change a setting; `--help` lists every key and what it takes.
    Set {
        /// The connection.
        id: String,
        #[arg(value_parser = setting_keys())]
        key: String,
        /// The new value, as the key takes it.
        value: String,
        /// Confirm a change that needs it (csql.record_type), after reading
        /// what changes with it.
        #[arg(long)]
        yes: bool,
    },
    /// Pause a connection: nothing is written to its systems and its change
    /// cursors hold still until it is resumed; messages already queued for
    /// it are held back. Recorded in the admin audit log.
    Pause { id: String },
    /// Resume a paused connection: it catches up from its held cursors, in
    /// order, losing nothing. Recorded in the admin audit log.
    Resume { id: String },
    /// Mirror a CRM custom object read-only into the MA (R6).
    AddCustomObject {
        id: String,
        /// API name, e.g. Subscription__c.
        #[arg(long)]
        name: String,
        /// Fields to mirror, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        fields: Vec<String>,
        /// The lookup field tying a record to a lead, contact or account.
        #[arg(long)]
        lookup_field: String,
        /// lead, contact or account.
        #[arg(long)]
        lookup_object: String,
    },
    /// List the field mapping (R2) with the fields both systems have, or
    /// change it: with `--preview`, only say what would be written.
    Mapping {
        id: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        change: Option<MappingCmd>,
    },
    /// Show the sync scope (which CRM records sync), or change it.
    Scope {
        id: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        change: Option<ScopeCmd>,
    },
}

/// The behaviours a mapped field can have.
fn sync_behaviours() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crmsync_domain::mapping::SyncBehaviour::ALL.map(|b| b.as_str()))
}

/// How a mapped field syncs: the options `set` and `add` share.
#[derive(Debug, Clone, clap::Args)]
pub struct BehaviourArgs {
    /// crm_wins, ma_wins, most_recent or read_only.
    #[arg(long, value_parser = sync_behaviours())]
    pub sync: String,
    /// A blank value may erase a filled one.
    #[arg(long)]
    pub blank_overwrites: bool,
    /// For read_only: the side the value comes from (ma or crm; crm by default).
    #[arg(long, value_parser = ["ma", "crm"])]
    pub source: Option<String>,
    /// Only show how many pairs would change on each side, with a sample.
    #[arg(long)]
    pub preview: bool,
}

#[derive(Debug, Subcommand)]
pub enum MappingCmd {
    /// Change a mapped field's behaviour; the affected pairs re-sync through the batch lane.
    Set {
        /// The MA field (the mapping's key).
        ma_field: String,
        #[command(flatten)]
        behaviour: BehaviourArgs,
    },
    /// Map a field both systems have (see the list).
    Add {
        /// The MA (prospect) field.
        ma_field: String,
        /// The CRM lead field.
        #[arg(long)]
        lead: Option<String>,
        /// The CRM contact field.
        #[arg(long)]
        contact: Option<String>,
        #[command(flatten)]
        behaviour: BehaviourArgs,
    },
    /// Stop syncing a mapped field.
    Remove {
        ma_field: String,
        #[arg(long)]
        preview: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScopeCmd {
    /// Replace the rules: every `--rule` must hold for a CRM record to sync.
    Set {
        /// `[lead.|contact.]Field:operator[:value[,value...]]`, operator one of
        /// equals, not_equals, in, is_blank, contains; e.g. `lead.Status:in:Open,Working`.
        #[arg(long = "rule", required = true)]
        rules: Vec<String>,
        /// Only count the records and pairs in and out.
        #[arg(long)]
        preview: bool,
    },
    /// Remove every rule: every record syncs.
    Clear {
        #[arg(long)]
        preview: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecordsCmd {
    /// Read both sides of a record again (its prospect and its lead or
    /// contact) and send them through the immediate lane, to be matched and
    /// applied like a detected change. Refused on a paused connection.
    /// Recorded in the admin audit log.
    SyncNow {
        /// The connection.
        #[arg(long, short = 'c', default_value = "default")]
        connection: String,
        /// An email, a prospect id or a CRM id (15 or 18 characters).
        key: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SystemArg {
    Ma,
    Crm,
    Cs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CsqlTypeArg {
    Lead,
    Opportunity,
}

impl From<CsqlTypeArg> for crmsync_domain::csql::CsqlRecordType {
    fn from(t: CsqlTypeArg) -> Self {
        match t {
            CsqlTypeArg::Lead => Self::Lead,
            CsqlTypeArg::Opportunity => Self::Opportunity,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CsAreaArg {
    Lead,
    Opportunity,
    Renewal,
}

impl CsAreaArg {
    pub fn as_str(self) -> &'static str {
        match self {
            CsAreaArg::Lead => "lead",
            CsAreaArg::Opportunity => "opportunity",
            CsAreaArg::Renewal => "renewal",
        }
    }
}

/// The sandbox CS platform (R9): CSQLs and the admin's configuration.
#[derive(Debug, Subcommand)]
pub enum CsCmd {
    /// A CSM saves a new CSQL in the CS lead or opportunity object.
    Create {
        record_type: CsqlTypeArg,
        /// The CS user saving it.
        #[arg(long = "as")]
        as_user: i64,
        /// The CS user owning it (the saver when omitted).
        #[arg(long)]
        owner: Option<i64>,
        /// Field values: `--set LastName=Doe --set Company=Acme`.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<KeyValue>,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// A CSM edits and saves a CSQL.
    Update {
        record_type: CsqlTypeArg,
        id: i64,
        #[arg(long = "as")]
        as_user: i64,
        #[arg(long = "set", value_name = "NAME=VALUE", required = true)]
        set: Vec<KeyValue>,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Show a CSQL with its sync status.
    Show {
        record_type: CsqlTypeArg,
        id: i64,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// List the most recently changed CSQLs.
    List {
        record_type: CsqlTypeArg,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Delete every record of the CS lead object (as an admin) or the CS
    /// opportunity object (only with the support privilege).
    DeleteAll {
        record_type: CsqlTypeArg,
        #[arg(long = "as")]
        as_user: i64,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Show the lead admin's configuration of an area (stages, views,
    /// email notifications), or the renewal center's.
    Config {
        area: CsAreaArg,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Change an area's stages.
    SetStages {
        area: CsAreaArg,
        #[arg(required = true)]
        stages: Vec<String>,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Configure a renewal center with these stages.
    RenewalCenter {
        #[arg(required = true)]
        stages: Vec<String>,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

/// `name=value`, as given to `--set`.
#[derive(Debug, Clone)]
pub struct KeyValue(pub String, pub String);

impl std::str::FromStr for KeyValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split_once('=').map(|(k, v)| KeyValue(k.trim().to_owned(), v.to_owned())).ok_or_else(|| format!("expected name=value, got {s:?}"))
    }
}

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Serve the sandbox over HTTP as Salesforce (OAuth 2.0, REST query,
    /// sObject Collections, Bulk API 2.0) and Account Engagement API v5, and
    /// its change events over the Salesforce Pub/Sub API (gRPC).
    Serve(ServeArgs),
    /// Fill a tenant with the realistic data set.
    Seed {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// 1.0 is about 4,000 prospects and 5,000 CRM people.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Delete every record of a tenant (users stay).
    Reset {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Create a record: prospect, lead, contact, account, opportunity,
    /// contact-role, prospect-account, or `custom:<Name__c>` for a custom object.
    Create {
        object: String,
        /// Field values, by API or column name: `--set LastName=Doe`.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<KeyValue>,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Change fields of a record.
    Update {
        object: String,
        id: String,
        #[arg(long = "set", value_name = "NAME=VALUE", required = true)]
        set: Vec<KeyValue>,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Assign a prospect to an MA user (`--user`), or unassign it.
    Assign {
        prospect: i64,
        #[arg(long, conflicts_with = "unassign", required_unless_present = "unassign")]
        user: Option<i64>,
        #[arg(long)]
        unassign: bool,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Move a record to its system's recycle bin (`custom:<Name__c>` for a
    /// custom object's record).
    Delete {
        object: String,
        id: String,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Restore a record from its system's recycle bin.
    Undelete {
        object: String,
        id: String,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Make many changes in one transaction (a burst, as an import or a mass
    /// update would): JSON lines from FILE, or standard input without one.
    /// Each line is one operation on any object, custom ones included:
    ///
    ///   {"op": "create", "object": "prospect", "set": {"email": "a@example.com"}}
    ///   {"op": "update", "object": "lead", "id": "00Q...", "set": {"Title": "CTO"}}
    ///   {"op": "delete", "object": "custom:Subscription__c", "id": "a0X..."}
    ///   {"op": "undelete", "object": "contact", "id": "003..."}
    ///
    /// All are committed together or none is; prints one JSON line per
    /// operation with the record's id.
    #[command(verbatim_doc_comment)]
    Batch {
        /// The file of operations (`-` or none: standard input).
        file: Option<PathBuf>,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Convert a lead as the CRM does: a contact, its account, optionally an opportunity.
    ConvertLead {
        lead: String,
        /// Put the contact in this existing account (a new one otherwise).
        #[arg(long)]
        account: Option<String>,
        /// Also create an opportunity with this name, the contact in a primary role.
        #[arg(long)]
        opportunity: Option<String>,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Show one record with its change tracking (a prospect with its account,
    /// opportunities and custom objects, as the MA shows it).
    Show {
        object: String,
        id: String,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// List the most recently changed records of an object
    /// (`custom:<Name__c>`: of that custom object).
    List {
        object: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// The CS platform: CSQLs and the admin's configuration.
    #[command(subcommand)]
    Cs(CsCmd),
    /// List the users of a system.
    Users {
        system: SystemArg,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Add an MA or CS user (`--crm-user` ties it to a CRM user) or a CRM user.
    AddUser {
        system: SystemArg,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        crm_user: Option<String>,
        /// CRM user without the API Enabled permission.
        #[arg(long)]
        no_api: bool,
        /// CS user: an internal collaborator (a free user type, typically from sales).
        #[arg(long)]
        internal_collaborator: bool,
        /// CS user: an admin (may bulk-delete CS lead records).
        #[arg(long)]
        admin: bool,
        /// CS user: holds the elevated support privilege (may delete CS opportunity records).
        #[arg(long)]
        support_privilege: bool,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the seeded data set (1.0: about 4,000 prospects).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    #[arg(long, default_value_t = 2)]
    pub matchers: usize,
    #[arg(long, default_value_t = 2)]
    pub appliers: usize,
    /// Database the demo creates afresh (dropped first if it exists).
    #[arg(long, default_value = "crmsync_demo")]
    pub database: String,
    /// Where the tiers' logs go.
    #[arg(long, default_value = ".demo")]
    pub work_dir: PathBuf,
    /// Give up waiting for the sync after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Reach the sandbox over HTTP: start `crmsync sandbox serve` and sync
    /// through the Salesforce connector (OAuth, REST query, sObject
    /// Collections, Bulk API 2.0) instead of the embedded sandbox.
    #[arg(long)]
    pub http: bool,
    /// Keep the admin console serving after the report, until Ctrl-C, to
    /// look around the demo's final state.
    #[arg(long)]
    pub keep_console: bool,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen. Loopback by default: `/sandbox-admin` has no login.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub bind: std::net::SocketAddr,
    /// The URL clients reach the server at, when not the bound address
    /// (behind a proxy or in a container).
    #[arg(long)]
    pub public_url: Option<String>,
    /// The sandbox CRM org served as Salesforce.
    #[arg(long, default_value = "default")]
    pub crm_tenant: String,
    /// The sandbox MA business unit served as Account Engagement.
    #[arg(long, default_value = "default")]
    pub ma_tenant: String,
    /// The connected app's consumer key.
    #[arg(long, default_value = "crmsync-sandbox")]
    pub client_id: String,
    /// The file holding the connected app's consumer secret (client
    /// credentials flow).
    #[arg(long, env = "CRMSYNC_SANDBOX_CLIENT_SECRET_FILE")]
    pub client_secret_file: std::path::PathBuf,
    /// The connected app's certificate as a PEM public key, enabling the
    /// JWT bearer flow.
    #[arg(long)]
    pub jwt_public_key: Option<std::path::PathBuf>,
    /// The business unit id clients must send (`Pardot-Business-Unit-Id`).
    #[arg(long, default_value = "0Uv000000000001AAA")]
    pub business_unit_id: String,
    /// Salesforce API requests allowed per day.
    #[arg(long, default_value_t = 15_000)]
    pub salesforce_daily_limit: u64,
    /// Account Engagement API calls allowed per day.
    #[arg(long, default_value_t = 25_000)]
    pub pardot_daily_limit: u64,
    /// How long an access token lives.
    #[arg(long, default_value_t = 7_200)]
    pub token_ttl_secs: u64,
    /// Where the Pub/Sub API (gRPC, plain HTTP/2) listens: Change Data
    /// Capture events of the CRM org. Default 127.0.0.1:7443 (Salesforce's
    /// port); when that is taken and no address was given, the server goes
    /// on without it and says so.
    #[arg(long)]
    pub pubsub_bind: Option<std::net::SocketAddr>,
}
