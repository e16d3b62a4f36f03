//! A Pub/Sub API client for the tests: logs in to a sandbox server as any
//! Salesforce client would, subscribes with flow control, and decodes change
//! events (Avro, bitmap fields) with the schemas the server hands out.

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use crmsync_pubsub::bitmap::{self, FieldShape};
use crmsync_pubsub::metadata;
use crmsync_pubsub::proto::pub_sub_client::PubSubClient;
use crmsync_pubsub::proto::{ConsumerEvent, FetchRequest, FetchResponse, ReplayPreset, SchemaInfo, SchemaRequest, TopicInfo, TopicRequest};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

use crate::TestApp;

/// A logged-in Pub/Sub client.
#[derive(Debug, Clone)]
pub struct PubSub {
    client: PubSubClient<Channel>,
    /// The Pub/Sub API's URL.
    pub url: String,
    pub token: String,
    pub instance_url: String,
    pub tenant_id: String,
    schemas: HashMap<String, (Schema, Vec<FieldShape>)>,
}

/// The org id in a token answer's `id` URL (`.../id/<org>/<user>`).
pub fn org_of(token: &Value) -> String {
    let id = token["id"].as_str().expect("an id URL");
    id.rsplit('/').nth(1).expect("the org id").to_owned()
}

impl PubSub {
    /// Logs in to the server at `url` and connects to its Pub/Sub API.
    pub async fn connect(url: &str, pubsub_url: &str) -> PubSub {
        let token = TestApp::sandbox_token(url).await;
        let channel = Channel::from_shared(pubsub_url.to_owned()).expect("a URL").connect().await.expect("reach the Pub/Sub API");
        PubSub {
            client: PubSubClient::new(channel),
            url: pubsub_url.to_owned(),
            token: token["access_token"].as_str().expect("a token").to_owned(),
            instance_url: token["instance_url"].as_str().expect("an instance URL").to_owned(),
            tenant_id: org_of(&token),
            schemas: HashMap::new(),
        }
    }

    /// `message` with this client's authentication metadata.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        let md = r.metadata_mut();
        md.insert(metadata::ACCESS_TOKEN, self.token.parse().expect("ascii"));
        md.insert(metadata::INSTANCE_URL, self.instance_url.parse().expect("ascii"));
        md.insert(metadata::TENANT_ID, self.tenant_id.parse().expect("ascii"));
        r
    }

    pub async fn topic(&mut self, name: &str) -> Result<TopicInfo, Status> {
        let r = self.request(TopicRequest { topic_name: name.into() });
        Ok(self.client.get_topic(r).await?.into_inner())
    }

    pub async fn schema(&mut self, id: &str) -> Result<SchemaInfo, Status> {
        let r = self.request(SchemaRequest { schema_id: id.into() });
        Ok(self.client.get_schema(r).await?.into_inner())
    }

    /// Opens a subscription asking for `n` events first.
    pub async fn subscribe(&mut self, topic: &str, preset: ReplayPreset, replay_id: Vec<u8>, n: i32) -> Result<Subscription, Status> {
        let (tx, rx) = mpsc::channel(16);
        let first = FetchRequest {
            topic_name: topic.into(),
            replay_preset: preset as i32,
            replay_id,
            num_requested: n,
            auth_refresh: String::new(),
        };
        tx.send(first).await.expect("queue the first request");
        let requests = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let stream = self.client.subscribe(self.request(requests)).await?.into_inner();
        Ok(Subscription { tx, stream })
    }

    /// An event decoded with its schema: the whole record as JSON (unions
    /// unwrapped, enums as their symbol) and the header's bitmap fields as
    /// field names.
    pub async fn decode(&mut self, event: &ConsumerEvent) -> Decoded {
        let e = event.event.as_ref().expect("an event");
        if !self.schemas.contains_key(&e.schema_id) {
            let info = self.schema(&e.schema_id).await.expect("the event's schema");
            assert_eq!(info.schema_id, e.schema_id);
            let json: Value = serde_json::from_str(&info.schema_json).expect("schema JSON");
            let schema = Schema::parse_str(&info.schema_json).expect("an Avro schema");
            self.schemas.insert(e.schema_id.clone(), (schema, shape(&json)));
        }
        let (schema, shape) = &self.schemas[&e.schema_id];
        let value = GenericDatumReader::builder(schema).build().unwrap().read_value(&mut &e.payload[..]).expect("an Avro payload");
        let json = to_json(value);
        let names = |field: &str| -> Vec<String> {
            let list: Vec<String> =
                json["ChangeEventHeader"][field].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
            bitmap::decode(&list, shape)
        };
        Decoded {
            replay_id: crmsync_pubsub::replay_id::decode(&event.replay_id).expect("a sandbox replay id"),
            changed: names("changedFields"),
            nulled: names("nulledFields"),
            json,
        }
    }
}

/// The top-level fields of an event schema, for bitmap decoding.
fn shape(schema: &Value) -> Vec<FieldShape> {
    schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let nested = f["type"]
                .as_array()
                .and_then(|u| u.iter().find(|t| t["type"] == "record"))
                .map(|r| r["fields"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_owned()).collect());
            FieldShape { name: f["name"].as_str().unwrap().to_owned(), nested }
        })
        .collect()
}

fn to_json(v: Avro) -> Value {
    match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(i) => Value::from(i),
        Avro::Long(l) => Value::from(l),
        Avro::Double(d) => Value::from(d),
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s),
        Avro::Union(_, inner) => to_json(*inner),
        Avro::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Avro::Record(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, to_json(v))).collect::<Map<_, _>>()),
        other => panic!("unexpected Avro value {other:?}"),
    }
}

/// A decoded change event.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub replay_id: i64,
    pub json: Value,
    /// `changedFields`, as field names (`Name.FirstName` for a part of a compound field).
    pub changed: Vec<String>,
    /// `nulledFields`, as field names.
    pub nulled: Vec<String>,
}

impl Decoded {
    pub fn header(&self, field: &str) -> &Value {
        &self.json["ChangeEventHeader"][field]
    }

    pub fn change_type(&self) -> &str {
        self.header("changeType").as_str().unwrap()
    }

    pub fn record_ids(&self) -> Vec<&str> {
        self.header("recordIds").as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
    }

    /// The record fields that carry a value.
    pub fn values(&self) -> Map<String, Value> {
        self.json
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| *k != "ChangeEventHeader" && !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// An open subscription.
#[derive(Debug)]
pub struct Subscription {
    tx: mpsc::Sender<FetchRequest>,
    stream: Streaming<FetchResponse>,
}

impl Subscription {
    /// Asks for `n` more events.
    pub async fn request(&self, n: i32) {
        self.send(FetchRequest { num_requested: n, ..Default::default() }).await;
    }

    pub async fn send(&self, r: FetchRequest) {
        self.tx.send(r).await.expect("the subscription is open");
    }

    /// The next response within `wait`: `None` if none came, `Some(Err)` if
    /// the stream ended with an error.
    pub async fn next(&mut self, wait: Duration) -> Option<Result<FetchResponse, Status>> {
        match tokio::time::timeout(wait, self.stream.message()).await {
            Err(_) => None,
            Ok(Ok(Some(r))) => Some(Ok(r)),
            Ok(Ok(None)) => Some(Err(Status::cancelled("the stream ended"))),
            Ok(Err(status)) => Some(Err(status)),
        }
    }

    /// Exactly `n` events, from as many responses as it takes, skipping
    /// keepalives; panics if they do not come within `wait`.
    pub async fn events(&mut self, n: usize, wait: Duration) -> Vec<ConsumerEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(r)) => out.extend(r.events),
                Some(Err(status)) => panic!("the subscription failed after {} of {n} events: {status:?}", out.len()),
                None => panic!("{} of {n} events came within {wait:?}", out.len()),
            }
        }
        assert_eq!(out.len(), n, "more events than expected");
        out
    }
}
