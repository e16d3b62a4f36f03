//! Change event topic names: `/data/<Entity>ChangeEvent` for a standard
//! object, `/data/<Name>__ChangeEvent` for the custom object `<Name>__c`,
//! and `/data/ChangeEvents` for every entity selected for Change Data
//! Capture.

/// A change event topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The change events of one object, by its API name (`Lead`,
    /// `Subscription__c`).
    Entity(String),
    /// The change events of every selected object.
    All,
}

const PREFIX: &str = "/data/";

impl Topic {
    /// The topic a name refers to, if it is a change event topic.
    pub fn parse(name: &str) -> Option<Topic> {
        let rest = name.strip_prefix(PREFIX)?;
        if rest == "ChangeEvents" {
            return Some(Topic::All);
        }
        let entity = if let Some(custom) = rest.strip_suffix("__ChangeEvent") {
            format!("{custom}__c")
        } else {
            rest.strip_suffix("ChangeEvent")?.to_owned()
        };
        let valid = entity.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && entity.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !entity.ends_with("__c__c");
        valid.then_some(Topic::Entity(entity))
    }

    /// The topic of an object's change events.
    pub fn of(entity: &str) -> Topic {
        Topic::Entity(entity.to_owned())
    }

    /// The topic's name.
    pub fn name(&self) -> String {
        match self {
            Topic::All => format!("{PREFIX}ChangeEvents"),
            Topic::Entity(e) => match e.strip_suffix("__c") {
                Some(custom) => format!("{PREFIX}{custom}__ChangeEvent"),
                None => format!("{PREFIX}{e}ChangeEvent"),
            },
        }
    }

    /// The name of the Avro record of the topic's events
    /// (`LeadChangeEvent`, `Subscription__ChangeEvent`).
    pub fn event_name(entity: &str) -> String {
        Topic::of(entity).name()[PREFIX.len()..].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_custom_and_all_topics_parse_and_print() {
        assert_eq!(Topic::parse("/data/LeadChangeEvent"), Some(Topic::of("Lead")));
        assert_eq!(Topic::parse("/data/Subscription__ChangeEvent"), Some(Topic::of("Subscription__c")));
        assert_eq!(Topic::parse("/data/ChangeEvents"), Some(Topic::All));
        assert_eq!(Topic::of("OpportunityContactRole").name(), "/data/OpportunityContactRoleChangeEvent");
        assert_eq!(Topic::of("Subscription__c").name(), "/data/Subscription__ChangeEvent");
        assert_eq!(Topic::event_name("Lead"), "LeadChangeEvent");
    }

    #[test]
    fn other_channels_are_not_change_event_topics() {
        for name in ["/event/Order__e", "/data/", "/data/ChangeEvent", "LeadChangeEvent", "/data/Le ad ChangeEvent"] {
            assert_eq!(Topic::parse(name), None, "{name}");
        }
    }
}
