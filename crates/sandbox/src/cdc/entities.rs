//! The shape of each entity's change events: which record fields an event
//! carries, in which order, with which type, and which of them are
//! compound fields (a lead's `Name` holds `FirstName` and `LastName`), as
//! Salesforce lays out a `<Entity>ChangeEvent` schema: the header first,
//! then the object's fields, compound ones as nested records, with the
//! created and last-modified stamps; never `IsDeleted` or
//! `SystemModstamp`. Each field names the column the capture trigger
//! records it from (none for the parts of a compound field the sandbox
//! does not model, which are always null).

/// An Avro-relevant field type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Bool,
    Int,
    Double,
    /// A date, sent as milliseconds since the epoch (midnight UTC).
    Date,
    /// A date and time, sent as milliseconds since the epoch.
    DateTime,
}

/// One field of an event: its API name, the captured column it comes from
/// (`None`: always null in the sandbox), its type and Salesforce's schema
/// doc (`Data:Email`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub api: String,
    pub column: Option<String>,
    pub kind: Kind,
    pub doc: String,
}

/// A top-level field of an event: a plain field or a compound one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Plain(Field),
    /// A compound field: its name, the Avro record name of its type
    /// (`Switchable_PersonName`, `Address`) and its parts.
    Compound {
        api: String,
        record: String,
        parts: Vec<Field>,
    },
}

impl Slot {
    pub fn api(&self) -> &str {
        match self {
            Slot::Plain(f) => &f.api,
            Slot::Compound { api, .. } => api,
        }
    }
}

/// An entity's change event fields, after the header (position 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub entity: String,
    pub slots: Vec<Slot>,
}

fn field(api: &str, column: Option<&str>, kind: Kind, doc: &str) -> Field {
    Field { api: api.into(), column: column.map(Into::into), kind, doc: doc.into() }
}

fn plain(api: &str, column: &str, kind: Kind, doc: &str) -> Slot {
    Slot::Plain(field(api, Some(column), kind, doc))
}

fn text(api: &str, column: &str) -> Slot {
    plain(api, column, Kind::Text, "Data:Text")
}

fn id(api: &str, column: &str) -> Slot {
    plain(api, column, Kind::Text, "Data:EntityId")
}

fn person_name() -> Slot {
    Slot::Compound {
        api: "Name".into(),
        record: "Switchable_PersonName".into(),
        parts: vec![
            field("Salutation", None, Kind::Text, "Data:DynamicEnum"),
            field("FirstName", Some("first_name"), Kind::Text, "Data:Text"),
            field("LastName", Some("last_name"), Kind::Text, "Data:Text"),
        ],
    }
}

fn address(api: &str, city: &str, country: &str) -> Slot {
    Slot::Compound {
        api: api.into(),
        record: "Address".into(),
        parts: vec![
            field("Street", None, Kind::Text, "Data:MultiLineText"),
            field("City", Some(city), Kind::Text, "Data:Text"),
            field("State", None, Kind::Text, "Data:Text"),
            field("PostalCode", None, Kind::Text, "Data:Text"),
            field("Country", Some(country), Kind::Text, "Data:Text"),
            field("Latitude", None, Kind::Double, "Data:Double"),
            field("Longitude", None, Kind::Double, "Data:Double"),
            field("GeocodeAccuracy", None, Kind::Text, "Data:DynamicEnum"),
        ],
    }
}

/// The created and last-modified stamps every event carries.
fn stamps() -> Vec<Slot> {
    vec![
        plain("CreatedDate", "created_at", Kind::DateTime, "CreatedDate:DateTime"),
        id("CreatedById", "created_by"),
        plain("LastModifiedDate", "modstamp", Kind::DateTime, "LastModifiedDate:DateTime"),
        id("LastModifiedById", "last_modified_by"),
    ]
}

/// The standard entities the sandbox CRM captures, in the order
/// `/data/ChangeEvents` lists them.
pub const STANDARD: [&str; 5] = ["Lead", "Contact", "Account", "Opportunity", "OpportunityContactRole"];

/// The layout of a standard entity's events.
pub fn standard(entity: &str) -> Option<Layout> {
    let mut slots = match entity {
        "Lead" => vec![
            person_name(),
            text("Title", "title"),
            text("Company", "company"),
            address("Address", "city", "country"),
            plain("Phone", "phone", Kind::Text, "Data:Phone"),
            plain("Email", "email", Kind::Text, "Data:Email"),
            plain("Status", "status", Kind::Text, "Data:DynamicEnum"),
            id("OwnerId", "owner_id"),
            plain("HasOptedOutOfEmail", "has_opted_out_of_email", Kind::Bool, "Data:Boolean"),
            plain("IsConverted", "is_converted", Kind::Bool, "Data:Boolean"),
            id("ConvertedAccountId", "converted_account_id"),
            id("ConvertedContactId", "converted_contact_id"),
            id("ConvertedOpportunityId", "converted_opportunity_id"),
        ],
        "Contact" => vec![
            id("AccountId", "account_id"),
            person_name(),
            address("MailingAddress", "mailing_city", "mailing_country"),
            plain("Phone", "phone", Kind::Text, "Data:Phone"),
            plain("Email", "email", Kind::Text, "Data:Email"),
            text("Title", "title"),
            id("OwnerId", "owner_id"),
            plain("HasOptedOutOfEmail", "has_opted_out_of_email", Kind::Bool, "Data:Boolean"),
        ],
        "Account" => vec![
            text("Name", "name"),
            address("BillingAddress", "billing_city", "billing_country"),
            plain("Website", "website", Kind::Text, "Data:Url"),
            plain("Industry", "industry", Kind::Text, "Data:DynamicEnum"),
            id("OwnerId", "owner_id"),
        ],
        "Opportunity" => vec![
            id("AccountId", "account_id"),
            text("Name", "name"),
            plain("StageName", "stage_name", Kind::Text, "Data:DynamicEnum"),
            plain("Amount", "amount", Kind::Double, "Data:Currency"),
            plain("CloseDate", "close_date", Kind::Date, "Data:DateOnly"),
            plain("IsClosed", "is_closed", Kind::Bool, "Data:Boolean"),
            plain("IsWon", "is_won", Kind::Bool, "Data:Boolean"),
            id("OwnerId", "owner_id"),
        ],
        "OpportunityContactRole" => vec![
            id("OpportunityId", "opportunity_id"),
            id("ContactId", "contact_id"),
            plain("Role", "role", Kind::Text, "Data:DynamicEnum"),
            plain("IsPrimary", "is_primary", Kind::Bool, "Data:Boolean"),
        ],
        _ => return None,
    };
    slots.extend(stamps());
    // Custom fields come last, as in Salesforce's schemas.
    let custom: &[(&str, &str, Kind)] = match entity {
        "Lead" => &[
            ("pi__score__c", "pi_score", Kind::Double),
            ("pi__grade__c", "pi_grade", Kind::Text),
            ("CSQL_Created_By__c", "csql_created_by", Kind::Text),
            ("crmsync_Id__c", "crmsync_id", Kind::Text),
        ],
        "Contact" => &[
            ("pi__score__c", "pi_score", Kind::Double),
            ("pi__grade__c", "pi_grade", Kind::Text),
            ("crmsync_Id__c", "crmsync_id", Kind::Text),
        ],
        "Opportunity" => &[("CSQL_Created_By__c", "csql_created_by", Kind::Text), ("crmsync_Id__c", "crmsync_id", Kind::Text)],
        _ => &[],
    };
    slots.extend(custom.iter().map(|(api, column, kind)| plain(api, column, *kind, doc_of(*kind))));
    Some(Layout { entity: entity.into(), slots })
}

fn doc_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "Data:Text",
        Kind::Bool => "Data:Boolean",
        Kind::Int => "Data:Int",
        Kind::Double => "Data:Double",
        Kind::Date => "Data:DateOnly",
        Kind::DateTime => "Data:DateTime",
    }
}

/// The layout of a custom object's events: its data fields (their API
/// names, typed from the values its records hold: numbers as doubles,
/// booleans, the rest text), in name order, after the stamps.
pub fn custom(entity: &str, data_fields: &[(String, Kind)]) -> Layout {
    let mut slots = stamps();
    let mut data: Vec<&(String, Kind)> = data_fields.iter().collect();
    data.sort_by(|a, b| a.0.cmp(&b.0));
    slots.extend(data.into_iter().map(|(api, kind)| plain(api, api, *kind, doc_of(*kind))));
    Layout { entity: entity.into(), slots }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_entity_has_a_layout_with_its_stamps() {
        for entity in STANDARD {
            let layout = standard(entity).unwrap();
            let names: Vec<&str> = layout.slots.iter().map(Slot::api).collect();
            for stamp in ["CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById"] {
                assert!(names.contains(&stamp), "{entity} lacks {stamp}");
            }
            assert!(!names.contains(&"IsDeleted") && !names.contains(&"SystemModstamp"));
        }
        assert!(standard("Prospect").is_none());
    }

    #[test]
    fn custom_layouts_list_data_fields_by_name_after_the_stamps() {
        let layout = custom("Subscription__c", &[("Seats__c".into(), Kind::Double), ("Plan__c".into(), Kind::Text)]);
        let names: Vec<&str> = layout.slots.iter().map(Slot::api).collect();
        assert_eq!(names[4..], ["Plan__c", "Seats__c"]);
    }
}
