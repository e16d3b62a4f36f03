//! The send loop with a scripted exchange and a gate that notes what it
//! hears: no transport, no clock beyond millisecond backoffs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::gate::{Admission, CallResult};

/// The API's failure in these tests: a code.
#[derive(Debug, Clone, PartialEq)]
struct Code(&'static str);

impl Failure for Code {
    fn into_connector(self) -> ConnectorError {
        ConnectorError::Fatal(format!("refused: {}", self.0))
    }
}

/// Plays back attempts; counts logins and forgotten tokens.
#[derive(Debug, Default)]
struct Scripted {
    script: VecDeque<Attempted<&'static str, Code>>,
    logins: u32,
    token: Option<u32>,
    forgotten: u32,
    login_fails: bool,
}

impl Scripted {
    fn new(script: Vec<(Verdict<&'static str, Code>, CallResult)>) -> Self {
        let script = script.into_iter().map(|(verdict, result)| Attempted { verdict, outcome: CallOutcome::of(result) }).collect();
        Scripted { script, ..Scripted::default() }
    }
}

impl Exchange for Scripted {
    type Output = &'static str;
    type Failure = Code;
    type Ready = u32;

    fn kind(&self) -> EndpointKind {
        EndpointKind::Write
    }

    async fn prepare(&mut self) -> Result<u32, CallError<Code>> {
        if self.login_fails {
            return Err(CallError::Login(OAuthError { error: "invalid_grant".into(), error_description: "no".into() }));
        }
        if self.token.is_none() {
            self.logins += 1;
            self.token = Some(self.logins);
        }
        Ok(self.logins)
    }

    async fn attempt(&mut self, token: &u32) -> Attempted<&'static str, Code> {
        assert_eq!(Some(*token), self.token, "every attempt has the current token");
        self.script.pop_front().expect("no more attempts were scripted")
    }

    async fn token_refused(&mut self, token: u32) {
        assert_eq!(Some(token), self.token.take());
        self.forgotten += 1;
    }
}

/// Notes what it hears; refuses once `refuse` is set.
#[derive(Debug, Default)]
struct Noting {
    heard: Mutex<Vec<(EndpointKind, CallResult)>>,
    refuse: bool,
}

#[async_trait]
impl CallGate for Noting {
    async fn admit(&self, _kind: EndpointKind) -> Result<Admission, ConnectorError> {
        if self.refuse { Err(ConnectorError::Transient("the daily limit is met".into())) } else { Ok(Admission::go()) }
    }

    async fn record(&self, kind: EndpointKind, outcome: &CallOutcome) {
        self.heard.lock().unwrap().push((kind, outcome.result));
    }
}

fn sender(gate: Arc<Noting>) -> Sender {
    let pacing = Pacing { backoff_base: Duration::from_millis(1), backoff_max: Duration::from_millis(2), ..Pacing::default() };
    Sender::new("Testforce", gate, pacing)
}

fn transient(m: &str) -> CallError<Code> {
    CallError::Connector(ConnectorError::Transient(m.into()))
}

fn heard(gate: &Noting) -> Vec<CallResult> {
    gate.heard.lock().unwrap().iter().map(|(_, r)| *r).collect()
}

const BUSY: CallResult = CallResult::Failed(Judgement::Retry { unprocessed: true });

#[tokio::test]
async fn transient_failures_are_retried_until_one_attempt_is_done() {
    let gate = Arc::new(Noting::default());
    let mut call = Scripted::new(vec![
        (Verdict::Retry(transient("busy")), BUSY),
        (Verdict::Retry(transient("cannot connect")), CallResult::Lost),
        (Verdict::Done("answer"), CallResult::Done),
    ]);
    assert_eq!(sender(gate.clone()).run(&mut call).await.unwrap(), "answer");
    assert_eq!(heard(&gate), [BUSY, CallResult::Lost, CallResult::Done], "the gate hears every attempt");
    assert!(gate.heard.lock().unwrap().iter().all(|(k, _)| *k == EndpointKind::Write));
    assert_eq!(call.logins, 1, "one token serves every attempt");
}

#[tokio::test]
async fn retries_run_out_as_a_transient_error_that_counts_the_attempts() {
    let gate = Arc::new(Noting::default());
    let retries = Pacing::default().retries as usize;
    let mut call = Scripted::new((0..=retries).map(|_| (Verdict::Retry(CallError::Api(Code("BUSY"))), BUSY)).collect());
    let err = ConnectorError::from(sender(gate.clone()).run(&mut call).await.unwrap_err());
    assert_eq!(err, ConnectorError::Transient(format!("refused: BUSY (after {} attempts)", retries + 1)));
    assert_eq!(heard(&gate).len(), retries + 1);
}

#[tokio::test]
async fn a_refused_token_means_one_new_login_and_a_second_refusal_gives_up() {
    let gate = Arc::new(Noting::default());
    let expired = || Verdict::Reauthenticate(transient("Testforce answered 401: INVALID_SESSION_ID"));
    let mut call = Scripted::new(vec![(expired(), CallResult::Failed(Judgement::Reauthenticate)), (Verdict::Done("ok"), CallResult::Done)]);
    assert_eq!(sender(gate.clone()).run(&mut call).await.unwrap(), "ok");
    assert_eq!((call.logins, call.forgotten), (2, 1));

    let mut call = Scripted::new(vec![
        (expired(), CallResult::Failed(Judgement::Reauthenticate)),
        (expired(), CallResult::Failed(Judgement::Reauthenticate)),
    ]);
    let err = ConnectorError::from(sender(gate).run(&mut call).await.unwrap_err());
    assert_eq!(err, ConnectorError::Transient("Testforce refused a fresh token: Testforce answered 401: INVALID_SESSION_ID".into()));
    assert_eq!((call.logins, call.forgotten), (2, 2));
}

#[tokio::test]
async fn a_failure_reaches_the_caller_as_the_api_said_it() {
    let gate = Arc::new(Noting::default());
    let mut call = Scripted::new(vec![(Verdict::Fail(CallError::Api(Code("INVALID_FIELD"))), CallResult::Failed(Judgement::Refused))]);
    assert_eq!(sender(gate.clone()).run(&mut call).await.unwrap_err(), CallError::Api(Code("INVALID_FIELD")));
    let limit = CallResult::Failed(Judgement::DailyLimit);
    let mut call = Scripted::new(vec![(Verdict::Fail(transient("code 122")), limit)]);
    assert_eq!(sender(gate.clone()).run(&mut call).await.unwrap_err(), transient("code 122"), "the daily limit is not retried");
    assert_eq!(heard(&gate), [CallResult::Failed(Judgement::Refused), limit], "the gate hears of the limit");
}

#[tokio::test]
async fn nothing_is_sent_when_the_gate_refuses_or_the_login_fails() {
    let gate = Arc::new(Noting { refuse: true, ..Noting::default() });
    let mut call = Scripted::new(vec![]);
    let err = sender(gate.clone()).run(&mut call).await.unwrap_err();
    assert_eq!(err, transient("the daily limit is met"));
    assert!(heard(&gate).is_empty(), "refused before any attempt");

    let gate = Arc::new(Noting::default());
    let mut call = Scripted { login_fails: true, ..Scripted::new(vec![]) };
    let err = sender(gate.clone()).run(&mut call).await.unwrap_err();
    assert!(matches!(&err, CallError::Login(o) if o.error == "invalid_grant"), "{err:?}");
    assert!(matches!(ConnectorError::from(err), ConnectorError::Fatal(m) if m.contains("invalid_grant")));
    assert!(heard(&gate).is_empty(), "the gate was never asked");
}

#[test]
fn refused_logins_are_fatal_unless_the_server_failed() {
    let o = |error: &str| OAuthError { error: error.into(), error_description: "user is inactive".into() };
    assert!(matches!(login_error(&o("invalid_grant")), ConnectorError::Fatal(m) if m.contains("user is inactive")));
    assert!(matches!(login_error(&o("invalid_client")), ConnectorError::Fatal(_)));
    assert!(matches!(login_error(&o("temporarily_unavailable")), ConnectorError::Transient(_)));
    let e: CallError<Code> = CallError::<Infallible>::Login(o("invalid_grant")).widen();
    assert!(matches!(e, CallError::Login(_)));
}
