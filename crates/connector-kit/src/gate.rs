//! The admission hook every call goes through (I8: the customer's API
//! allowance is money). Before each attempt the send loop asks the
//! connector's [`CallGate`] to [`admit`](CallGate::admit) a call of its
//! [`EndpointKind`]; after it, the gate is told how it went
//! ([`record`](CallGate::record)), with what the answer reported of the
//! API's usage.
//!
//! A gate may wait (usage at crmsync's share), refuse at once as transient
//! (a daily limit met), or hand out something the call holds while it is
//! in flight (a concurrency slot). Gates compose with [`Gates`], so a new
//! policy (an allowance shared by replicas, calls counted per kind) is one
//! more gate, not a change to the loop.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use crmsync_connector::ConnectorError;
use crmsync_wire::salesforce::ApiUsage;
use tokio::sync::OwnedSemaphorePermit;

use crate::send::Judgement;

/// What an API endpoint is for, as far as its cost is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointKind {
    /// The token endpoint: logins.
    Auth,
    /// Reads: change queries, look-ups, reading back what was written.
    Query,
    /// Record writes (sObject Collections, prospect writes, mirrors).
    Write,
    /// Steps of a bulk job (Bulk API 2.0: create, upload, poll, results).
    Bulk,
    /// Steps of an import (Account Engagement's Import API).
    Import,
    /// Change events (the Pub/Sub API's subscriptions).
    Events,
    /// Anything else (limits, metadata).
    Other,
}

impl EndpointKind {
    pub const ALL: [EndpointKind; 7] = [
        EndpointKind::Auth,
        EndpointKind::Query,
        EndpointKind::Write,
        EndpointKind::Bulk,
        EndpointKind::Import,
        EndpointKind::Events,
        EndpointKind::Other,
    ];

    /// Its name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Auth => "auth",
            EndpointKind::Query => "query",
            EndpointKind::Write => "write",
            EndpointKind::Bulk => "bulk",
            EndpointKind::Import => "import",
            EndpointKind::Events => "events",
            EndpointKind::Other => "other",
        }
    }
}

/// What an admitted call holds until its attempt is over (concurrency
/// slots); dropping it gives them back.
#[derive(Debug, Default)]
pub struct Admission {
    slots: Vec<OwnedSemaphorePermit>,
}

impl Admission {
    /// Admitted, holding nothing.
    pub fn go() -> Self {
        Admission::default()
    }

    /// Admitted, holding a slot.
    pub fn holding(slot: OwnedSemaphorePermit) -> Self {
        Admission { slots: vec![slot] }
    }

    fn join(&mut self, other: Admission) {
        self.slots.extend(other.slots);
    }
}

/// How an admitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// It was not sent after all (a later gate refused it).
    NotSent,
    /// Sent, but no whole answer came back: the connection failed or the
    /// body broke off. It may have reached the API.
    Lost,
    /// The API answered with success.
    Done,
    /// The API answered with a failure, judged so.
    Failed(Judgement),
}

/// How an admitted call went, as its gate hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    pub result: CallResult,
    /// The API's own count of today's calls, when the answer reports it
    /// (`Sforce-Limit-Info`).
    pub usage: Option<ApiUsage>,
}

impl CallOutcome {
    pub fn of(result: CallResult) -> Self {
        CallOutcome { result, usage: None }
    }

    /// Whether the call went out (whatever came back): it counts.
    pub fn sent(&self) -> bool {
        self.result != CallResult::NotSent
    }
}

/// Decides whether a call may go now, and hears how it went.
#[async_trait]
pub trait CallGate: Debug + Send + Sync {
    /// Waits until a call of `kind` may go, or refuses it as
    /// [`ConnectorError::Transient`] saying which limit and until when.
    async fn admit(&self, kind: EndpointKind) -> Result<Admission, ConnectorError>;

    /// How an admitted call went. Every admission is followed by one
    /// record, [`CallResult::NotSent`] included.
    async fn record(&self, kind: EndpointKind, outcome: &CallOutcome);
}

/// Lets every call through.
#[derive(Debug, Clone, Copy, Default)]
pub struct Open;

#[async_trait]
impl CallGate for Open {
    async fn admit(&self, _kind: EndpointKind) -> Result<Admission, ConnectorError> {
        Ok(Admission::go())
    }

    async fn record(&self, _kind: EndpointKind, _outcome: &CallOutcome) {}
}

/// Several gates, asked in order: a call goes only when all admit it. When
/// one refuses, those that had admitted it hear [`CallResult::NotSent`],
/// so a count they took is given back.
#[derive(Debug, Clone, Default)]
pub struct Gates(Vec<Arc<dyn CallGate>>);

impl Gates {
    pub fn new(gates: Vec<Arc<dyn CallGate>>) -> Self {
        Gates(gates)
    }

    /// This and `gate` after it.
    pub fn then(mut self, gate: Arc<dyn CallGate>) -> Self {
        self.0.push(gate);
        self
    }
}

#[async_trait]
impl CallGate for Gates {
    async fn admit(&self, kind: EndpointKind) -> Result<Admission, ConnectorError> {
        let mut held = Admission::go();
        for (i, gate) in self.0.iter().enumerate() {
            match gate.admit(kind).await {
                Ok(a) => held.join(a),
                Err(e) => {
                    for admitted in &self.0[..i] {
                        admitted.record(kind, &CallOutcome::of(CallResult::NotSent)).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(held)
    }

    async fn record(&self, kind: EndpointKind, outcome: &CallOutcome) {
        for gate in &self.0 {
            gate.record(kind, outcome).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Admits while it has calls left, and notes what it hears.
    #[derive(Debug)]
    struct Counting {
        left: Mutex<u32>,
        heard: Mutex<Vec<(EndpointKind, CallResult)>>,
    }

    impl Counting {
        fn new(left: u32) -> Arc<Self> {
            Arc::new(Counting { left: Mutex::new(left), heard: Mutex::default() })
        }
    }

    #[async_trait]
    impl CallGate for Counting {
        async fn admit(&self, _kind: EndpointKind) -> Result<Admission, ConnectorError> {
            let mut left = self.left.lock().unwrap();
            if *left == 0 {
                return Err(ConnectorError::Transient("no calls left".into()));
            }
            *left -= 1;
            Ok(Admission::go())
        }

        async fn record(&self, kind: EndpointKind, outcome: &CallOutcome) {
            if !outcome.sent() {
                *self.left.lock().unwrap() += 1;
            }
            self.heard.lock().unwrap().push((kind, outcome.result));
        }
    }

    #[tokio::test]
    async fn a_call_goes_only_when_every_gate_admits_it_and_a_refusal_gives_counts_back() {
        let (first, second) = (Counting::new(5), Counting::new(1));
        let gates = Gates::new(vec![first.clone(), second.clone()]);
        assert!(gates.admit(EndpointKind::Query).await.is_ok());
        gates.record(EndpointKind::Query, &CallOutcome::of(CallResult::Done)).await;
        let err = gates.admit(EndpointKind::Write).await.unwrap_err();
        assert_eq!(err, ConnectorError::Transient("no calls left".into()));
        assert_eq!(*first.left.lock().unwrap(), 4, "the first gate's count is given back");
        assert_eq!(*first.heard.lock().unwrap(), [(EndpointKind::Query, CallResult::Done), (EndpointKind::Write, CallResult::NotSent)]);
        assert_eq!(*second.heard.lock().unwrap(), [(EndpointKind::Query, CallResult::Done)]);
        assert!(Open.admit(EndpointKind::Auth).await.is_ok());
        assert_eq!(EndpointKind::ALL.map(EndpointKind::as_str).len(), 7);
    }
}
