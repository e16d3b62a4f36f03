//! How a failed call is judged: which answers are worth retrying, which mean
//! a new token, and which can only be fixed by someone changing the
//! configuration. Kept free of I/O so the rules are unit-tested.

use crmsync_connector::ConnectorError;
use crmsync_connector_kit::{Failure, Judgement};
use crmsync_wire::salesforce::{ApiError, codes};

/// A REST answer that is not a success: its status and the error list the
/// body holds (Salesforce bodies are lists of `{message, errorCode}`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiFailure {
    pub status: u16,
    pub errors: Vec<ApiError>,
}

impl ApiFailure {
    /// Reads an error body; a body that is not the documented list (a proxy's
    /// HTML page, an object) keeps its first characters as the message.
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        ApiFailure { status, errors: ApiError::list_of(status, body) }
    }

    pub fn has_code(&self, code: &str) -> bool {
        self.errors.iter().any(|e| e.error_code == code)
    }

    /// `CODE: message; CODE: message`, for error texts.
    pub fn summary(&self) -> String {
        ApiError::summary(&self.errors)
    }
}

/// Judges a failed answer. A 403 is an auth-looking status, but
/// `REQUEST_LIMIT_EXCEEDED` is the daily limit, never a credential problem:
/// it is retried with backoff, as are 429 and server failures. A 403 or a
/// 429 refused the request before doing anything, so even a create may be
/// sent again. The rest (a field or object the org lacks, a bad query, the
/// API switched off) cannot be helped by retrying.
pub(crate) fn judge(failure: &ApiFailure) -> Judgement {
    match failure.status {
        401 => Judgement::Reauthenticate,
        403 if failure.has_code(codes::REQUEST_LIMIT_EXCEEDED) => Judgement::Retry { unprocessed: true },
        429 => Judgement::Retry { unprocessed: true },
        408 => Judgement::Retry { unprocessed: false },
        s if s >= 500 => Judgement::Retry { unprocessed: false },
        _ => Judgement::Fatal,
    }
}

impl Failure for ApiFailure {
    fn into_connector(self) -> ConnectorError {
        match judge(&self) {
            Judgement::Retry { .. } | Judgement::Reauthenticate | Judgement::DailyLimit => {
                ConnectorError::Transient(format!("Salesforce answered {}: {}", self.status, self.summary()))
            }
            Judgement::Fatal | Judgement::Refused => {
                ConnectorError::Fatal(format!("Salesforce refused the request ({}): {}", self.status, self.summary()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::CallError;

    fn failure(status: u16, code: &str) -> ApiFailure {
        ApiFailure { status, errors: vec![ApiError { message: "m".into(), error_code: code.into(), fields: vec![] }] }
    }

    #[test]
    fn limits_and_server_failures_are_retried_and_never_taken_for_auth() {
        assert_eq!(judge(&failure(403, codes::REQUEST_LIMIT_EXCEEDED)), Judgement::Retry { unprocessed: true });
        assert_eq!(judge(&failure(429, "TOO_MANY")), Judgement::Retry { unprocessed: true });
        assert_eq!(judge(&failure(503, "SERVER_UNAVAILABLE")), Judgement::Retry { unprocessed: false });
        assert_eq!(judge(&failure(401, codes::INVALID_SESSION_ID)), Judgement::Reauthenticate);
        let e = ConnectorError::from(CallError::Api(failure(503, "SERVER_UNAVAILABLE")));
        assert_eq!(e, ConnectorError::Transient("Salesforce answered 503: SERVER_UNAVAILABLE: m".into()));
    }

    #[test]
    fn bad_requests_are_fatal_with_the_servers_message() {
        for code in [codes::INVALID_FIELD, codes::INVALID_TYPE, codes::MALFORMED_QUERY] {
            assert_eq!(judge(&failure(400, code)), Judgement::Fatal);
        }
        assert_eq!(judge(&failure(403, codes::API_DISABLED_FOR_ORG)), Judgement::Fatal);
        let e = ConnectorError::from(CallError::Api(failure(400, codes::INVALID_FIELD)));
        assert!(matches!(&e, ConnectorError::Fatal(m) if m.contains("INVALID_FIELD: m")), "{e}");
    }

    #[test]
    fn error_bodies_read_as_lists_objects_or_text() {
        let f = ApiFailure::from_body(400, br#"[{"message":"bad","errorCode":"MALFORMED_QUERY"}]"#);
        assert!(f.has_code(codes::MALFORMED_QUERY));
        let f = ApiFailure::from_body(502, b"<html>Bad Gateway</html>");
        assert_eq!(f.errors[0].error_code, "HTTP_502");
        assert!(f.summary().contains("Bad Gateway"));
    }
}
