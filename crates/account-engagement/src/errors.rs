//! How a failed call is judged. Account Engagement answers errors as
//! `{"code": n, "message": ...}` with an HTTP status, and the code decides:
//! an expired token (184, or a bare 401) means a new login; too many
//! requests in flight (66) and server failures are retried; the daily limit
//! (122) is waited out, never retried at once and never taken for an auth
//! failure though both come as 4xx; a wrong business unit (181) is fatal.
//! Any other refusal of a write is that record's outcome. Free of I/O so the
//! rules are unit-tested.

use crmsync_connector::{ConnectorError, WriteOutcome};
use crmsync_connector_kit::{Failure, Judgement};
use crmsync_wire::pardot::{ErrorBody, codes};

/// An answer that is not a success.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AeFailure {
    pub status: u16,
    /// The v5 error code, if the body held one.
    pub code: Option<i64>,
    pub message: String,
}

impl AeFailure {
    /// Reads an error body; one that is not v5's (a proxy's page) keeps its
    /// first characters as the message.
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => AeFailure { status, code: Some(e.code), message: e.message },
            Err(_) => AeFailure { status, code: None, message: String::from_utf8_lossy(body).chars().take(200).collect() },
        }
    }

    /// `code n: message`, for error texts.
    pub fn summary(&self) -> String {
        match self.code {
            Some(c) => format!("HTTP {} code {c}: {}", self.status, self.message),
            None => format!("HTTP {}: {}", self.status, self.message),
        }
    }
}

/// Judges a failed answer, by its code first: limits come as 4xx too.
/// Too many requests in flight (66) were refused before anything was done,
/// so even a create may be sent again; a bare 429 or a server failure may
/// have done the work.
pub(crate) fn judge(f: &AeFailure) -> Judgement {
    match f.code {
        Some(codes::CONCURRENT_REQUEST_LIMIT) => Judgement::Retry { unprocessed: true },
        Some(codes::DAILY_API_LIMIT) => Judgement::DailyLimit,
        Some(codes::INVALID_TOKEN) => Judgement::Reauthenticate,
        Some(codes::INVALID_BUSINESS_UNIT) => Judgement::Fatal,
        _ => match f.status {
            401 => Judgement::Reauthenticate,
            408 | 429 => Judgement::Retry { unprocessed: false },
            s if s >= 500 => Judgement::Retry { unprocessed: false },
            _ => Judgement::Refused,
        },
    }
}

/// The outcome of a write the API refused on its merits.
pub(crate) fn refusal(f: &AeFailure) -> WriteOutcome {
    match f.code {
        Some(codes::INVALID_PROSPECT_ID) => WriteOutcome::NotFound,
        Some(codes::FENCED) => WriteOutcome::Fenced,
        Some(code) => WriteOutcome::Rejected { code: code.to_string(), message: f.message.clone() },
        None => WriteOutcome::Rejected { code: format!("HTTP_{}", f.status), message: f.message.clone() },
    }
}

/// A refusal on the merits that no write turned into an outcome: a read's
/// fatal error.
impl Failure for AeFailure {
    fn into_connector(self) -> ConnectorError {
        ConnectorError::Fatal(format!("Account Engagement refused the request ({})", self.summary()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::CallError;

    fn failure(status: u16, code: i64) -> AeFailure {
        AeFailure { status, code: Some(code), message: "m".into() }
    }

    #[test]
    fn limits_are_never_taken_for_auth_failures() {
        assert_eq!(judge(&failure(429, codes::DAILY_API_LIMIT)), Judgement::DailyLimit);
        assert_eq!(judge(&failure(401, codes::DAILY_API_LIMIT)), Judgement::DailyLimit, "the code decides, not the status");
        assert_eq!(judge(&failure(429, codes::CONCURRENT_REQUEST_LIMIT)), Judgement::Retry { unprocessed: true });
        assert_eq!(judge(&failure(401, codes::INVALID_TOKEN)), Judgement::Reauthenticate);
        assert_eq!(judge(&AeFailure::from_body(401, b"<html>Unauthorized</html>")), Judgement::Reauthenticate);
    }

    #[test]
    fn server_failures_are_retried_and_a_wrong_business_unit_is_fatal() {
        assert_eq!(judge(&AeFailure::from_body(502, b"Bad Gateway")), Judgement::Retry { unprocessed: false });
        assert_eq!(judge(&failure(500, 1)), Judgement::Retry { unprocessed: false }, "a 5xx may have done the work");
        assert_eq!(judge(&failure(400, codes::INVALID_BUSINESS_UNIT)), Judgement::Fatal);
        assert_eq!(judge(&failure(400, codes::INVALID_FIELD_VALUE)), Judgement::Refused);
    }

    #[test]
    fn refused_writes_become_outcomes() {
        assert_eq!(refusal(&failure(404, codes::INVALID_PROSPECT_ID)), WriteOutcome::NotFound);
        assert_eq!(refusal(&failure(409, codes::FENCED)), WriteOutcome::Fenced);
        assert_eq!(
            refusal(&AeFailure { status: 400, code: Some(codes::INVALID_EMAIL), message: "Invalid prospect email address".into() }),
            WriteOutcome::Rejected { code: "4".into(), message: "Invalid prospect email address".into() }
        );
        assert_eq!(refusal(&failure(400, codes::INVALID_FIELD_VALUE)), WriteOutcome::Rejected { code: "25".into(), message: "m".into() });
        assert!(matches!(refusal(&AeFailure::from_body(400, b"nope")), WriteOutcome::Rejected { code, .. } if code == "HTTP_400"));
    }

    #[test]
    fn error_bodies_read_as_v5_or_text() {
        let f = AeFailure::from_body(429, br#"{"code":122,"message":"Daily API rate limit met."}"#);
        assert_eq!((f.code, f.message.as_str()), (Some(122), "Daily API rate limit met."));
        assert!(f.summary().contains("code 122"));
        let e = ConnectorError::from(CallError::Api(failure(400, 25)));
        assert!(matches!(&e, ConnectorError::Fatal(m) if m.contains("code 25")), "{e}");
    }
}
