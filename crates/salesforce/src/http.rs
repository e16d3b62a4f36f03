//! The Salesforce REST API as the connector kit's [`HttpApi`]: paths are
//! relative to the org's `instance_url` (which the token names), every
//! answer reports the org's API usage in `Sforce-Limit-Info`, and error
//! bodies are lists of `{message, errorCode}` judged by [`judge`]. Every
//! call made as the integration user names the engine in
//! `Sforce-Call-Options: client=<id>`, which the org writes into the
//! change events the call's writes cause (REST, Collections and Bulk API
//! 2.0 alike), so they are known as the engine's own (I7).
//!
//! The kit's [`HttpClient`] does the rest (token, gates, retries, re-login,
//! tracing); this module also names the client and its errors for the
//! connector's other modules.

use crmsync_connector_kit::{ApiUsage, Call, HttpApi, HttpClient, Judgement, Token};
use crmsync_wire::salesforce::{CALL_OPTIONS_HEADER, LIMIT_INFO_HEADER};
use reqwest::RequestBuilder;
use reqwest::header::HeaderMap;

use crate::errors::{ApiFailure, judge};

/// The client of one org.
pub(crate) type Http = HttpClient<Rest>;

/// Why a call failed: the org's [`ApiFailure`], a refused login, or an
/// error already in the engine's terms.
pub(crate) type CallError = crmsync_connector_kit::CallError<ApiFailure>;

/// The REST API of one org at one version.
#[derive(Debug)]
pub(crate) struct Rest {
    api_version: String,
    /// `client=<id>` for `Sforce-Call-Options`.
    call_options: String,
}

impl Rest {
    /// The API at `api_version`, the engine naming itself `client`.
    pub fn new(api_version: &str, client: &str) -> Self {
        Rest { api_version: api_version.to_owned(), call_options: format!("client={client}") }
    }

    /// `/services/data/{version}/{rest}`.
    pub fn data_path(&self, rest: &str) -> String {
        format!("/services/data/{}/{}", self.api_version, rest.trim_start_matches('/'))
    }
}

impl HttpApi for Rest {
    type Failure = ApiFailure;

    const NAME: &'static str = "Salesforce";

    fn base_url<'a>(&'a self, token: &'a Token) -> &'a str {
        token.instance_url()
    }

    fn span(&self, call: &Call) -> tracing::Span {
        tracing::info_span!("salesforce_http", method = %call.method, path = %call.path, status = tracing::field::Empty)
    }

    /// Only the integration user's calls are the engine's own: a write made
    /// as another user (a CSM's logged-in CSQL) is that user's change, and
    /// its event must wake the feed like any user's.
    fn decorate(&self, request: RequestBuilder, call: &Call) -> RequestBuilder {
        if call.as_user.is_none() { request.header(CALL_OPTIONS_HEADER, &self.call_options) } else { request }
    }

    fn usage(&self, headers: &HeaderMap) -> Option<ApiUsage> {
        headers.get(LIMIT_INFO_HEADER).and_then(|v| v.to_str().ok()).and_then(ApiUsage::parse)
    }

    fn failure(&self, status: u16, body: &[u8]) -> ApiFailure {
        ApiFailure::from_body(status, body)
    }

    fn judge(&self, failure: &ApiFailure) -> Judgement {
        judge(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_carry_the_version_and_answers_their_usage() {
        let rest = Rest::new("v60.0", "crmsync");
        assert_eq!(rest.data_path("/queryAll"), "/services/data/v60.0/queryAll");
        let mut headers = HeaderMap::new();
        assert_eq!(rest.usage(&headers), None);
        headers.insert(LIMIT_INFO_HEADER, "api-usage=25/15000".parse().unwrap());
        assert_eq!(rest.usage(&headers), Some(ApiUsage { used: 25, max: 15000 }));
    }

    #[test]
    fn the_integration_users_calls_name_the_engine_and_calls_as_another_user_do_not() {
        crmsync_connector_kit::install_crypto_provider();
        let rest = Rest::new("v60.0", "crmsync");
        let client = reqwest::Client::new();
        let header = |call: &Call| {
            let req = rest.decorate(client.get("http://127.0.0.1/x"), call).build().unwrap();
            req.headers().get(CALL_OPTIONS_HEADER).map(|v| v.to_str().unwrap().to_owned())
        };
        let call = Call::get(crmsync_connector_kit::EndpointKind::Write, "/x");
        assert_eq!(header(&call).as_deref(), Some("client=crmsync"));
        assert_eq!(header(&call.acting_as(Some("csm@example.com".into()))), None);
    }
}
