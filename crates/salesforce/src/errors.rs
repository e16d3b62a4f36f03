//! How a failed call is judged: which answers are worth retrying, which mean
//! a new token, and which can only be fixed by someone changing the
//! configuration. Kept free of I/O so the rules are unit-tested.

use crmsync_connector::ConnectorError;
use crmsync_wire::salesforce::{ApiError, OAuthError, codes};

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
        if let Ok(errors) = serde_json::from_slice::<Vec<ApiError>>(body)
            && !errors.is_empty()
        {
            return ApiFailure { status, errors };
        }
        if let Ok(one) = serde_json::from_slice::<ApiError>(body) {
            return ApiFailure { status, errors: vec![one] };
        }
        let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
        ApiFailure { status, errors: vec![ApiError { message: text, error_code: format!("HTTP_{status}"), fields: vec![] }] }
    }

    pub fn has_code(&self, code: &str) -> bool {
        self.errors.iter().any(|e| e.error_code == code)
    }

    /// `CODE: message; CODE: message`, for error texts.
    pub fn summary(&self) -> String {
        self.errors.iter().map(|e| format!("{}: {}", e.error_code, e.message)).collect::<Vec<_>>().join("; ")
    }
}

/// What to do about a failed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// The session expired or was revoked: log in again, then retry once.
    Reauthenticate,
    /// The org is busy or over a limit, or the server failed: back off and
    /// retry a bounded number of times, then report it as transient.
    Retry,
    /// The request itself is wrong (a field or object the org lacks, a bad
    /// query, the API switched off): retrying cannot help.
    Fatal,
}

/// Judges a failed answer. A 403 is an auth-looking status, but
/// `REQUEST_LIMIT_EXCEEDED` is the daily limit, never a credential problem.
pub(crate) fn disposition(failure: &ApiFailure) -> Disposition {
    match failure.status {
        401 => Disposition::Reauthenticate,
        403 if failure.has_code(codes::REQUEST_LIMIT_EXCEEDED) => Disposition::Retry,
        408 | 429 => Disposition::Retry,
        s if s >= 500 => Disposition::Retry,
        _ => Disposition::Fatal,
    }
}

/// Why a call failed, before it is turned into the engine's terms: callers
/// look at API failures (an expired query locator, a refused act-as login)
/// before deciding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CallError {
    /// The API refused the request, and retrying would not help.
    Api(ApiFailure),
    /// The token endpoint refused a login.
    Login(OAuthError),
    /// Already in the engine's terms (retries exhausted, a transport failure,
    /// a configuration problem found locally).
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
            CallError::Api(f) => match disposition(&f) {
                Disposition::Retry | Disposition::Reauthenticate => {
                    ConnectorError::Transient(format!("Salesforce answered {}: {}", f.status, f.summary()))
                }
                Disposition::Fatal => ConnectorError::Fatal(format!("Salesforce refused the request ({}): {}", f.status, f.summary())),
            },
            CallError::Login(o) => login_error(&o),
            CallError::Connector(c) => c,
        }
    }
}

/// A refused login: bad credentials, an unknown client, a user who may not
/// log in. None of these heals by waiting, except the server's own failure.
pub(crate) fn login_error(o: &OAuthError) -> ConnectorError {
    let text = format!("Salesforce login refused: {}: {}", o.error, o.error_description);
    match o.error.as_str() {
        "server_error" | "temporarily_unavailable" => ConnectorError::Transient(text),
        _ => ConnectorError::Fatal(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: u16, code: &str) -> ApiFailure {
        ApiFailure { status, errors: vec![ApiError { message: "m".into(), error_code: code.into(), fields: vec![] }] }
    }

    #[test]
    fn limits_and_server_failures_are_retried_and_never_taken_for_auth() {
        assert_eq!(disposition(&failure(403, codes::REQUEST_LIMIT_EXCEEDED)), Disposition::Retry);
        assert_eq!(disposition(&failure(429, "TOO_MANY")), Disposition::Retry);
        assert_eq!(disposition(&failure(503, "SERVER_UNAVAILABLE")), Disposition::Retry);
        assert_eq!(disposition(&failure(401, codes::INVALID_SESSION_ID)), Disposition::Reauthenticate);
    }

    #[test]
    fn bad_requests_are_fatal_with_the_servers_message() {
        for code in [codes::INVALID_FIELD, codes::INVALID_TYPE, codes::MALFORMED_QUERY] {
            assert_eq!(disposition(&failure(400, code)), Disposition::Fatal);
        }
        assert_eq!(disposition(&failure(403, codes::API_DISABLED_FOR_ORG)), Disposition::Fatal);
        let e = ConnectorError::from(CallError::Api(failure(400, codes::INVALID_FIELD)));
        assert!(matches!(&e, ConnectorError::Fatal(m) if m.contains("INVALID_FIELD: m")), "{e}");
    }

    #[test]
    fn bad_credentials_are_fatal() {
        let e = login_error(&OAuthError { error: "invalid_client".into(), error_description: "invalid client credentials".into() });
        assert!(matches!(&e, ConnectorError::Fatal(m) if m.contains("invalid client credentials")));
        let e = login_error(&OAuthError { error: "invalid_grant".into(), error_description: "user is inactive".into() });
        assert!(matches!(e, ConnectorError::Fatal(_)));
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
