//! Error responses as each API writes them: Salesforce REST a list of
//! `{message, errorCode}`, OAuth `{error, error_description}`, Account
//! Engagement `{code, message}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crmsync_wire::pardot::ErrorBody;
use crmsync_wire::salesforce::{ApiError, OAuthError};

/// A Salesforce REST error.
#[derive(Debug)]
pub struct SfError {
    pub status: StatusCode,
    pub errors: Vec<ApiError>,
}

impl SfError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        SfError { status, errors: vec![ApiError { message: message.into(), error_code: code.to_owned(), fields: vec![] }] }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN_EXCEPTION", format!("An unexpected error occurred: {e}"))
    }
}

impl IntoResponse for SfError {
    fn into_response(self) -> Response {
        (self.status, Json(self.errors)).into_response()
    }
}

impl From<sqlx::Error> for SfError {
    fn from(e: sqlx::Error) -> Self {
        SfError::internal(e)
    }
}

impl From<crmsync_connector::ConnectorError> for SfError {
    fn from(e: crmsync_connector::ConnectorError) -> Self {
        SfError::internal(e)
    }
}

/// An OAuth error (always 400 for the flows the sandbox serves).
#[derive(Debug)]
pub struct OAuthFailure(pub OAuthError);

impl OAuthFailure {
    pub fn new(error: &str, description: impl Into<String>) -> Self {
        OAuthFailure(OAuthError { error: error.to_owned(), error_description: description.into() })
    }
}

impl IntoResponse for OAuthFailure {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(self.0)).into_response()
    }
}

/// An Account Engagement v5 error.
#[derive(Debug)]
pub struct AeError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl AeError {
    pub fn new(status: StatusCode, code: i64, message: impl Into<String>) -> Self {
        AeError { status, body: ErrorBody { code, message: message.into() } }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, 1, format!("internal error: {e}"))
    }
}

impl IntoResponse for AeError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<sqlx::Error> for AeError {
    fn from(e: sqlx::Error) -> Self {
        AeError::internal(e)
    }
}

impl From<crmsync_connector::ConnectorError> for AeError {
    fn from(e: crmsync_connector::ConnectorError) -> Self {
        AeError::internal(e)
    }
}

/// The API a path belongs to, for the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OAuth,
    Salesforce,
    AccountEngagement,
    Admin,
}

impl Api {
    fn of(path: &str) -> Api {
        if path.starts_with("/services/oauth2") {
            Api::OAuth
        } else if path.starts_with("/api/") {
            Api::AccountEngagement
        } else if path.starts_with("/sandbox-admin") {
            Api::Admin
        } else {
            Api::Salesforce
        }
    }
}

/// Gives every error answer the body its API writes. The handlers' own
/// errors already have it; what does not is what the router and axum's
/// extractors answer before a handler runs (an unknown route or method,
/// malformed JSON, a wrong content type, a missing parameter), which came
/// as `text/plain` or empty, and which a client reading Salesforce's error
/// list (or Account Engagement's `{code, message}`) could not read. axum's
/// 422 for JSON of the wrong shape is Salesforce's 400.
pub async fn api_shaped(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::header::{ALLOW, CONTENT_TYPE};
    let api = Api::of(req.uri().path());
    let on_query = req.uri().path().contains("/query");
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let allow = resp.headers().get(ALLOW).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // The text is axum's own (a few hundred bytes at most).
    let text =
        axum::body::to_bytes(resp.into_body(), 64 * 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned()).unwrap_or_default();
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY { StatusCode::BAD_REQUEST } else { status };
    let json_body = text.contains("JSON") || text.contains("json");
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("NOT_FOUND", "The requested resource does not exist".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "METHOD_NOT_ALLOWED",
            format!("HTTP Method '{method}' not allowed. Allowed are {}", allow.as_deref().unwrap_or_default().replace(' ', "")),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("UNSUPPORTED_MEDIA_TYPE", format!("Content-Type header specified in HTTP request is not supported: {text}"))
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("JSON_PARSER_ERROR", format!("The request body is too large: {text}")),
        StatusCode::BAD_REQUEST if json_body => ("JSON_PARSER_ERROR", text),
        StatusCode::BAD_REQUEST if on_query => ("MALFORMED_QUERY", text),
        StatusCode::BAD_REQUEST => ("MISSING_ARGUMENT", text),
        s if s.is_server_error() => ("UNKNOWN_EXCEPTION", format!("An unexpected error occurred: {text}")),
        _ => ("INVALID_REQUEST", text),
    };
    match api {
        Api::Salesforce => SfError::new(status, code, message).into_response(),
        Api::OAuth => (status, Json(OAuthError { error: "invalid_request".to_owned(), error_description: message })).into_response(),
        Api::AccountEngagement => {
            use crmsync_wire::pardot::codes;
            let ae = match code {
                "MISSING_ARGUMENT" => codes::MISSING_PARAMETERS,
                "JSON_PARSER_ERROR" => codes::INVALID_FIELD_VALUE,
                _ => codes::INVALID_ACTION,
            };
            AeError::new(status, ae, message).into_response()
        }
        Api::Admin => (status, Json(serde_json::json!({"error": code, "message": message}))).into_response(),
    }
}
