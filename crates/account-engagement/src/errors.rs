//! How a failed call is judged. Account Engagement answers errors as
//! `{"code": n, "message": ...}` with an HTTP status, and the code decides:
//! an expired token (184, or a bare 401) means a new login; too many
//! requests in flight (66) and server failures are retried; the daily limit
//! (122) is waited out, never retried at once and never taken for an auth
//! failure though both come as 4xx; a wrong business unit (181) is fatal.
//! Any other refusal of a write is that record's outcome. Free of I/O so the
//! rules are unit-tested.

use crmsync_connector::{ConnectorError, WriteOutcome};
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

/// What to do about a failed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// The token expired or was revoked: log in again, then retry once.
    Reauthenticate,
    /// Busy (too many requests in flight) or a server failure: back off
    /// and retry a bounded number of times, then report it as transient.
    Retry,
    /// The business unit's daily calls are used up: stop calling for a
    /// while and report it as transient.
    DailyLimit,
    /// The configuration is wrong (the business unit): retrying cannot help.
    Fatal,
    /// The request was refused on its merits (a bad value, an unknown
    /// prospect, crmsync's fence): a write's outcome, a read's fatal error.
    Refused,
}

/// Judges a failed answer, by its code first: limits come as 4xx too.
pub(crate) fn disposition(f: &AeFailure) -> Disposition {
    match f.code {
        Some(codes::CONCURRENT_REQUEST_LIMIT) => Disposition::Retry,
        Some(codes::DAILY_API_LIMIT) => Disposition::DailyLimit,
        Some(codes::INVALID_TOKEN) => Disposition::Reauthenticate,
        Some(codes::INVALID_BUSINESS_UNIT) => Disposition::Fatal,
        _ => match f.status {
            401 => Disposition::Reauthenticate,
            408 | 429 => Disposition::Retry,
            s if s >= 500 => Disposition::Retry,
            _ => Disposition::Refused,
        },
    }
}

/// Whether the server refused the request before doing anything with it,
/// so that even a create may be sent again.
pub(crate) fn refused_unprocessed(d: Disposition, f: &AeFailure) -> bool {
    matches!(d, Disposition::Reauthenticate | Disposition::DailyLimit) || f.code == Some(codes::CONCURRENT_REQUEST_LIMIT)
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

/// Why a call failed, before it is put in the engine's terms: writes look
/// at a refusal before deciding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CallError {
    /// Refused on its merits ([`Disposition::Refused`]).
    Api(AeFailure),
    /// Already in the engine's terms.
    Connector(ConnectorError),
}

impl From<ConnectorError> for CallError {
    fn from(e: ConnectorError) -> Self {
        CallError::Connector(e)
    }
}

impl From<CallError> for ConnectorError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Api(f) => ConnectorError::Fatal(format!("Account Engagement refused the request ({})", f.summary())),
            CallError::Connector(c) => c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: u16, code: i64) -> AeFailure {
        AeFailure { status, code: Some(code), message: "m".into() }
    }

    #[test]
    fn limits_are_never_taken_for_auth_failures() {
        assert_eq!(disposition(&failure(429, codes::DAILY_API_LIMIT)), Disposition::DailyLimit);
        assert_eq!(disposition(&failure(401, codes::DAILY_API_LIMIT)), Disposition::DailyLimit, "the code decides, not the status");
        assert_eq!(disposition(&failure(429, codes::CONCURRENT_REQUEST_LIMIT)), Disposition::Retry);
        assert_eq!(disposition(&failure(401, codes::INVALID_TOKEN)), Disposition::Reauthenticate);
        assert_eq!(disposition(&AeFailure::from_body(401, b"<html>Unauthorized</html>")), Disposition::Reauthenticate);
    }

    #[test]
    fn server_failures_are_retried_and_a_wrong_business_unit_is_fatal() {
        assert_eq!(disposition(&AeFailure::from_body(502, b"Bad Gateway")), Disposition::Retry);
        assert_eq!(disposition(&failure(500, 1)), Disposition::Retry);
        assert_eq!(disposition(&failure(400, codes::INVALID_BUSINESS_UNIT)), Disposition::Fatal);
        assert_eq!(disposition(&failure(400, codes::INVALID_FIELD_VALUE)), Disposition::Refused);
        assert!(refused_unprocessed(Disposition::Retry, &failure(429, codes::CONCURRENT_REQUEST_LIMIT)));
        assert!(!refused_unprocessed(Disposition::Retry, &failure(503, 1)), "a 5xx may have done the work");
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
