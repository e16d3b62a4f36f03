//! One HTTP call as a connector describes it ([`Call`]: what endpoint kind
//! it is, method, path, parameters, body, whether resending it is harmless,
//! whom it acts as) and its successful [`Answer`].
//!
//! A call names its [`EndpointKind`] when it is made, so no call reaches the
//! gates (the API allowance, the limits) without one.

use chrono::{DateTime, Utc};
use crmsync_connector::ConnectorError;
use reqwest::Method;

use crate::gate::EndpointKind;

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    None,
    Json(serde_json::Value),
    Csv(Vec<u8>),
    /// `multipart/form-data`: named parts (a JSON input and a file).
    Multipart(Vec<crmsync_wire::multipart::Part>),
}

/// One call, relative to the API's base URL.
#[derive(Debug, Clone)]
pub struct Call {
    pub kind: EndpointKind,
    pub method: Method,
    /// Without a query string: the path is traced, parameters never are
    /// (they carry SOQL and emails).
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Whether sending it twice does no harm. A create is not: it is resent
    /// only when it certainly did not reach the server, or the server
    /// refused it before doing anything.
    pub idempotent: bool,
    /// The username to act as; `None` for the integration user.
    pub as_user: Option<String>,
}

impl Call {
    pub fn new(kind: EndpointKind, method: Method, path: impl Into<String>) -> Self {
        Call { kind, method, path: path.into(), query: Vec::new(), headers: Vec::new(), body: Body::None, idempotent: true, as_user: None }
    }

    pub fn get(kind: EndpointKind, path: impl Into<String>) -> Self {
        Call::new(kind, Method::GET, path)
    }

    pub fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub fn header(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((key, value.into()));
        self
    }

    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Body::Json(body);
        self
    }

    pub fn csv(mut self, body: Vec<u8>) -> Self {
        self.body = Body::Csv(body);
        self
    }

    pub fn multipart(mut self, parts: Vec<crmsync_wire::multipart::Part>) -> Self {
        self.body = Body::Multipart(parts);
        self
    }

    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }

    pub fn acting_as(mut self, username: Option<String>) -> Self {
        self.as_user = username;
        self
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    /// The API that answered, for error texts.
    api: &'static str,
    pub body: Vec<u8>,
    /// A server time no later than when the request was handled: the
    /// answer's `Date` (whole seconds, rounded down) less the round trip,
    /// or the local clock if there is no `Date`.
    pub server_time: DateTime<Utc>,
}

impl Answer {
    pub fn new(api: &'static str, body: Vec<u8>, server_time: DateTime<Utc>) -> Self {
        Answer { api, body, server_time }
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ConnectorError::Fatal(format!("{} answered with a body crmsync cannot read: {e}", self.api)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_answer_names_the_api_and_is_fatal() {
        let answer = Answer::new("Salesforce", b"<html>".to_vec(), Utc::now());
        let err = answer.json::<serde_json::Value>().unwrap_err();
        assert!(matches!(&err, ConnectorError::Fatal(m) if m.starts_with("Salesforce answered with a body")), "{err}");
        let call = Call::get(EndpointKind::Query, "/x").query("q", "SELECT Id FROM Lead").not_idempotent();
        assert!(!call.idempotent && call.kind == EndpointKind::Query && call.as_user.is_none());
    }
}
