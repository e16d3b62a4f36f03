//! Account Engagement API v5 as the connector kit's [`HttpApi`]: paths are
//! relative to the configured base URL, every call carries
//! `Pardot-Business-Unit-Id` besides the Salesforce bearer token, and error
//! bodies are `{"code": n, "message": ...}` judged by [`judge`].
//!
//! The kit's [`HttpClient`] does the rest (token, gates, retries, re-login,
//! tracing by method and path only: query strings carry emails); this
//! module also names the client and its errors for the connector's other
//! modules.

use crmsync_connector::ConnectorError;
use crmsync_connector_kit::{Call, HttpApi, HttpClient, Judgement, Token};
use crmsync_wire::pardot::BUSINESS_UNIT_HEADER;
use reqwest::RequestBuilder;

use crate::errors::{AeFailure, judge};

/// The API's name in error texts.
pub(crate) const NAME: &str = "Account Engagement";

/// The client of one business unit.
pub(crate) type Http = HttpClient<V5>;

/// Why a call failed: a refusal on the merits ([`AeFailure`]), or an error
/// already in the engine's terms.
pub(crate) type CallError = crmsync_connector_kit::CallError<AeFailure>;

/// API v5 of one business unit.
#[derive(Debug)]
pub(crate) struct V5 {
    base_url: String,
    business_unit: String,
}

impl V5 {
    /// `base_url` must have passed the kit's `check_base_url`.
    pub fn new(base_url: String, business_unit: &str) -> Self {
        V5 { base_url, business_unit: business_unit.to_owned() }
    }
}

/// `Account Engagement GET /path: detail`, for error texts.
fn what(call: &Call, detail: &str) -> String {
    format!("{NAME} {} {}: {detail}", call.method, call.path)
}

impl HttpApi for V5 {
    type Failure = AeFailure;

    const NAME: &'static str = NAME;

    fn base_url<'a>(&'a self, _token: &'a Token) -> &'a str {
        &self.base_url
    }

    fn span(&self, call: &Call) -> tracing::Span {
        tracing::info_span!("account_engagement_http", method = %call.method, path = %call.path, status = tracing::field::Empty)
    }

    fn decorate(&self, request: RequestBuilder, _call: &Call) -> RequestBuilder {
        request.header(BUSINESS_UNIT_HEADER, &self.business_unit)
    }

    fn failure(&self, status: u16, body: &[u8]) -> AeFailure {
        AeFailure::from_body(status, body)
    }

    fn judge(&self, failure: &AeFailure) -> Judgement {
        judge(failure)
    }

    /// Only a refusal on the merits reaches the caller as it came (a write
    /// makes it the record's outcome); the rest is put in the engine's
    /// terms here, naming the call.
    fn error(&self, call: &Call, failure: AeFailure, judgement: Judgement) -> CallError {
        let text = what(call, &failure.summary());
        match judgement {
            Judgement::Refused => CallError::Api(failure),
            Judgement::Fatal => CallError::Connector(ConnectorError::Fatal(format!(
                "{text} (check the business unit id: it is the 18-character 0Uv... id of Business Unit Setup)"
            ))),
            Judgement::Reauthenticate | Judgement::Retry { .. } | Judgement::DailyLimit => {
                CallError::Connector(ConnectorError::Transient(text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crmsync_connector_kit::EndpointKind;
    use crmsync_wire::pardot::codes;

    use super::*;

    #[test]
    fn failures_name_the_call_and_only_refusals_reach_the_caller_as_they_came() {
        let v5 = V5::new("https://pi.pardot.com".into(), "0Uv000000000042AAA");
        let call = Call::get(EndpointKind::Query, "/api/v5/objects/prospects/7");
        let failure = |code| AeFailure { status: 400, code: Some(code), message: "m".into() };
        let unit = v5.error(&call, failure(codes::INVALID_BUSINESS_UNIT), Judgement::Fatal);
        assert!(
            matches!(&unit, CallError::Connector(ConnectorError::Fatal(m))
                if m.starts_with("Account Engagement GET /api/v5/objects/prospects/7: HTTP 400 code 181: m (check the business unit id")),
            "{unit:?}"
        );
        let limit = v5.error(&call, failure(codes::DAILY_API_LIMIT), Judgement::DailyLimit);
        assert!(matches!(limit, CallError::Connector(ConnectorError::Transient(m)) if m.contains("code 122")));
        assert!(matches!(v5.error(&call, failure(25), Judgement::Refused), CallError::Api(f) if f.code == Some(25)));
    }
}
