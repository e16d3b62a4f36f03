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
