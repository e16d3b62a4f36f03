//! The Salesforce Pub/Sub API (gRPC, `eventbus.v1.PubSub`) over the
//! sandbox CRM's Change Data Capture: `crmsync sandbox serve` answers it on
//! a listener of its own (`--pubsub-bind`, 127.0.0.1:7443 by default; plain
//! HTTP/2 on loopback, where Salesforce serves
//! api.pubsub.salesforce.com:7443 over TLS).
//!
//! - Authentication: every call carries the gRPC metadata `accesstoken` (a
//!   token from this server's `/services/oauth2/token`), `instanceurl` (the
//!   `instance_url` handed out with it) and `tenantid` (the org id, also in
//!   the token's `id` URL). Anything else is `UNAUTHENTICATED`. Pub/Sub
//!   calls do not count against the REST API's daily requests.
//! - Topics: `/data/<Entity>ChangeEvent` (`Lead`, `Contact`, `Account`,
//!   `Opportunity`, `OpportunityContactRole`), `/data/<Name>__ChangeEvent`
//!   for the custom object `<Name>__c`, each while its entity is selected
//!   (`NOT_FOUND` otherwise, as Salesforce answers), and
//!   `/data/ChangeEvents` for every selected entity. `GetTopic` says they can be subscribed to, not
//!   published to; `Publish` answers each event with a `PUBLISH` error.
//! - `GetSchema`: each entity's Avro schema (see [`avro`]).
//! - `Subscribe`: see [`subscribe`]. `ManagedSubscribe` (a Salesforce beta)
//!   is `UNIMPLEMENTED`.
//!
//! Errors carry Salesforce's code in the `error-code` trailer and the call's
//! id after `rpcId:` in the message, as the real service does.
//!
//! What a test or demo can change (`/sandbox-admin`, see `admin`): the
//! retention window, the daily delivery allocation and what was delivered,
//! the keepalive period, the overflow threshold (`/sandbox-admin/limits`);
//! which entities are selected, and the switches that make the next events
//! gap events or the next transactions overflow events
//! (`/sandbox-admin/cdc`).

pub mod avro;
pub mod feed;
mod subscribe;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crmsync_pubsub::proto::pub_sub_server::PubSub;
use crmsync_pubsub::proto::{
    self, FetchRequest, FetchResponse, ManagedFetchRequest, ManagedFetchResponse, PublishRequest, PublishResponse, SchemaInfo,
    SchemaRequest, TopicInfo, TopicRequest,
};
use crmsync_pubsub::{Topic, error_codes, metadata};
use crmsync_sandbox::cdc::{ChangeLog, entities};
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::state::AppState;
use avro::EventSchema;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Pub/Sub service of one sandbox org.
#[derive(Debug, Clone)]
pub struct Service {
    st: Arc<AppState>,
    log: ChangeLog,
    feed: feed::Feed,
    schemas: Arc<Mutex<HashMap<String, Arc<EventSchema>>>>,
    stop: CancellationToken,
}

/// A new call id, for the `rpc_id` fields and error messages.
fn rpc_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A gRPC error as Salesforce's Pub/Sub API shapes it: the status, the
/// cause in the `error-code` trailer, the call's id after `rpcId:`.
pub(crate) fn error(code: Code, error_code: &str, message: &str) -> Status {
    let id = rpc_id();
    let mut trailers = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(error_code) {
        trailers.insert(metadata::ERROR_CODE, v);
    }
    if let Ok(v) = MetadataValue::try_from(id.as_str()) {
        trailers.insert(metadata::RPC_ID, v);
    }
    Status::with_metadata(code, format!("{message} rpcId: {id}"), trailers)
}

fn internal(e: impl std::fmt::Display) -> Status {
    error(Code::Internal, "sfdc.platform.eventbus.grpc.service.unavailable", &format!("The sandbox database failed: {e}"))
}

impl Service {
    /// The service, with its feed running until `stop` is cancelled.
    pub fn start(st: Arc<AppState>, stop: CancellationToken) -> Service {
        let feed = feed::Feed::start(st.clone(), stop.clone());
        let log = ChangeLog::new(st.pool.clone(), &st.config.crm_tenant);
        Service { st, log, feed, schemas: Default::default(), stop }
    }

    /// The caller's session, from the call's metadata.
    async fn authenticate(&self, md: &MetadataMap) -> Result<(), Status> {
        let header = |name| md.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
        let (Some(token), Some(instance), Some(tenant)) =
            (header(metadata::ACCESS_TOKEN), header(metadata::INSTANCE_URL), header(metadata::TENANT_ID))
        else {
            return Err(error(
                Code::Unauthenticated,
                error_codes::AUTH_HEADERS_INVALID,
                "The accesstoken, instanceurl and tenantid headers are required.",
            ));
        };
        let live = self.st.sessions.lock().await.get(token).is_some_and(|s| s.expires > std::time::Instant::now());
        let same = |a: &str, b: &str| a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'));
        if !live || !same(instance, self.st.base_url()) || tenant != self.st.org_id {
            return Err(error(
                Code::Unauthenticated,
                error_codes::AUTH,
                "An authentication exception occurred. Provide valid authentication via metadata headers.",
            ));
        }
        Ok(())
    }

    /// A topic of this org, and the entity it is about (`None`: all). An
    /// entity's topic exists while the entity is selected for Change Data
    /// Capture: Salesforce answers `NOT_FOUND` for the channel of an
    /// object that is not (a subscription already open is left alone).
    async fn topic(&self, name: &str) -> Result<(Topic, Option<String>), Status> {
        if name.trim().is_empty() {
            return Err(error(Code::InvalidArgument, error_codes::TOPIC_EMPTY, "The topic name is blank."));
        }
        let not_found = || error(Code::NotFound, error_codes::TOPIC_NOT_FOUND, &format!("Topic not found: {name}."));
        let entity = match Topic::parse(name).ok_or_else(not_found)? {
            Topic::All => return Ok((Topic::All, None)),
            Topic::Entity(e) => e,
        };
        let known = entities::STANDARD.contains(&entity.as_str())
            || (entity.ends_with("__c") && self.log.custom_object_exists(&entity).await.map_err(internal)?);
        if known && self.log.is_selected(&entity).await.map_err(internal)? {
            Ok((Topic::of(&entity), Some(entity)))
        } else {
            Err(not_found())
        }
    }

    /// An entity's current event schema (a custom object's follows its
    /// records' fields), remembered by id for GetSchema.
    pub(crate) async fn schema(&self, entity: &str) -> Result<Arc<EventSchema>, Status> {
        let layout = match entities::standard(entity) {
            Some(l) => l,
            None => self.log.custom_layout(entity).await.map_err(internal)?,
        };
        let schema = Arc::new(EventSchema::new(layout).map_err(internal)?);
        let mut known = self.schemas.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(known.entry(schema.id.clone()).or_insert(schema).clone())
    }

    fn known_schema(&self, id: &str) -> Option<Arc<EventSchema>> {
        self.schemas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned()
    }
}

#[tonic::async_trait]
impl PubSub for Service {
    type SubscribeStream = ResponseStream<FetchResponse>;
    type PublishStreamStream = ResponseStream<PublishResponse>;
    type ManagedSubscribeStream = ResponseStream<ManagedFetchResponse>;

    async fn subscribe(&self, request: Request<Streaming<FetchRequest>>) -> Result<Response<Self::SubscribeStream>, Status> {
        self.authenticate(request.metadata()).await?;
        let stream = subscribe::start(self.clone(), request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn get_schema(&self, request: Request<SchemaRequest>) -> Result<Response<SchemaInfo>, Status> {
        self.authenticate(request.metadata()).await?;
        let id = request.into_inner().schema_id;
        if id.trim().is_empty() {
            return Err(error(Code::InvalidArgument, error_codes::SCHEMA_EMPTY, "The schema ID is blank."));
        }
        if self.known_schema(&id).is_none() {
            // Not asked for since the server started: compute every entity's.
            for entity in entities::STANDARD {
                self.schema(entity).await?;
            }
            for (entity, selected) in self.log.selection().await.map_err(internal)? {
                if selected && entity.ends_with("__c") {
                    self.schema(&entity).await?;
                }
            }
        }
        let schema = self
            .known_schema(&id)
            .ok_or_else(|| error(Code::NotFound, error_codes::SCHEMA_ACCESS, &format!("No schema with ID {id} in this org.")))?;
        Ok(Response::new(SchemaInfo { schema_json: schema.json.clone(), schema_id: schema.id.clone(), rpc_id: rpc_id() }))
    }

    async fn get_topic(&self, request: Request<TopicRequest>) -> Result<Response<TopicInfo>, Status> {
        self.authenticate(request.metadata()).await?;
        let (topic, entity) = self.topic(&request.into_inner().topic_name).await?;
        let schema_id = match entity {
            Some(e) => self.schema(&e).await?.id.clone(),
            // Events of every entity: each names its own schema.
            None => String::new(),
        };
        Ok(Response::new(TopicInfo {
            topic_name: topic.name(),
            tenant_guid: self.st.org_id.clone(),
            can_publish: false,
            can_subscribe: true,
            schema_id,
            rpc_id: rpc_id(),
        }))
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        self.authenticate(request.metadata()).await?;
        Ok(Response::new(self.refuse_publish(request.into_inner()).await?))
    }

    async fn publish_stream(&self, request: Request<Streaming<PublishRequest>>) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.authenticate(request.metadata()).await?;
        let service = self.clone();
        let requests = request.into_inner();
        let answers = futures::stream::unfold((service, requests), |(service, mut requests)| async move {
            match requests.message().await {
                Ok(Some(r)) => {
                    let answer = service.refuse_publish(r).await;
                    Some((answer, (service, requests)))
                }
                Ok(None) | Err(_) => None,
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn managed_subscribe(
        &self,
        _request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        Err(Status::unimplemented("The sandbox does not serve managed subscriptions; use Subscribe."))
    }
}

impl Service {
    /// Change event topics are published by the org itself: every event of
    /// a publish request is answered with a PUBLISH error.
    async fn refuse_publish(&self, r: PublishRequest) -> Result<PublishResponse, Status> {
        let (topic, _) = self.topic(&r.topic_name).await?;
        let results = r
            .events
            .iter()
            .map(|e| proto::PublishResult {
                replay_id: Vec::new(),
                error: Some(proto::Error {
                    code: proto::ErrorCode::Publish as i32,
                    msg: format!("{} is a change event topic: only the org publishes its events.", topic.name()),
                }),
                correlation_key: e.id.clone(),
            })
            .collect();
        Ok(PublishResponse { results, schema_id: String::new(), rpc_id: rpc_id() })
    }
}
