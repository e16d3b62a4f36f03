//! The Salesforce login as a token source of its own: the token endpoint,
//! the flow's credentials and the token cache, behind [`Login::token`] and
//! [`Login::forget`].
//!
//! Public because Account Engagement takes Salesforce tokens: its connector
//! logs in through this too instead of carrying a second copy of the OAuth
//! code. Tokens and credentials stay in `SecretString`s, so neither a log
//! line nor a span can carry them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use crmsync_connector::ConnectorError;
use crmsync_domain::endpoint::OAuth;
use crmsync_wire::salesforce::{OAuthError, TokenResponse};
use reqwest::header::ACCEPT;
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

use crate::auth::{self, Credentials, Token, TokenCache};
use crate::errors::{ApiFailure, CallError};
use crate::http::{check_base_url, client, transport_text};
use crate::pacing::Pacing;

/// Logs in to one org and keeps the tokens, one per user, shared by every
/// call so that one login serves them all.
#[derive(Debug)]
pub struct Login {
    client: reqwest::Client,
    login_url: String,
    creds: Credentials,
    tokens: TokenCache,
    pacing: Pacing,
}

impl Login {
    /// Checks the login URL (https, or plain http to this machine only) and
    /// reads the flow's secret; no request is made yet. `pacing` says how
    /// often a failed login is retried.
    pub fn new(oauth: &OAuth, timeout: Duration, pacing: Pacing) -> Result<Self, ConnectorError> {
        let login_url = check_base_url(&oauth.login_url)?;
        let creds = Credentials::load(&oauth.flow)?;
        Ok(Login { client: client(timeout)?, login_url, creds, tokens: TokenCache::default(), pacing })
    }

    /// The integration user's token, logging in if there is none yet.
    pub async fn token(&self) -> Result<Arc<Token>, ConnectorError> {
        self.token_for(None).await.map_err(ConnectorError::from)
    }

    /// Forgets `stale` (a token an answer refused), unless another call has
    /// already replaced it; the next [`Login::token`] logs in again.
    pub async fn forget(&self, stale: &Arc<Token>) {
        self.tokens.forget(None, stale).await;
    }

    /// Whether this flow can log in as another user.
    pub(crate) fn can_act_as(&self) -> bool {
        self.creds.can_act_as()
    }

    /// The token for `user` (the integration user when `None`).
    pub(crate) async fn token_for(&self, user: Option<&str>) -> Result<Arc<Token>, CallError> {
        if let Some(t) = self.tokens.get(user).await {
            return Ok(t);
        }
        let token = Arc::new(self.login(user).await?);
        self.tokens.put(user, token.clone()).await;
        Ok(token)
    }

    pub(crate) async fn forget_for(&self, user: Option<&str>, stale: &Arc<Token>) {
        self.tokens.forget(user, stale).await;
    }

    /// Logs in, retrying transport failures and server errors.
    async fn login(&self, user: Option<&str>) -> Result<Token, CallError> {
        let url = format!("{}/services/oauth2/token", self.login_url);
        let mut attempt = 0;
        loop {
            let form = auth::token_form(&self.creds, &self.login_url, user, Utc::now().timestamp())?;
            let exposed: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.expose_secret())).collect();
            let span =
                tracing::info_span!("salesforce_http", method = "POST", path = "/services/oauth2/token", status = tracing::field::Empty);
            let sent = self.client.post(&url).header(ACCEPT, "application/json").form(&exposed).send().instrument(span.clone()).await;
            let failure = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    span.record("status", status);
                    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                    if (200..300).contains(&status) {
                        let t: TokenResponse = serde_json::from_slice(&body)
                            .map_err(|e| ConnectorError::Fatal(format!("the Salesforce token answer cannot be read: {e}")))?;
                        let instance_url = check_base_url(&t.instance_url)?;
                        let user_id = t
                            .user_id()
                            .ok_or_else(|| ConnectorError::Fatal("the Salesforce token answer names no user".into()))?
                            .to_owned();
                        return Ok(Token { access: SecretString::from(t.access_token), instance_url, user_id });
                    }
                    if status < 500
                        && let Ok(o) = serde_json::from_slice::<OAuthError>(&body)
                    {
                        return Err(CallError::Login(o));
                    }
                    if status < 500 && status != 429 {
                        let f = ApiFailure::from_body(status, &body);
                        return Err(CallError::Connector(ConnectorError::Fatal(format!("Salesforce login failed: {}", f.summary()))));
                    }
                    format!("the token endpoint answered {status}")
                }
                Err(e) => transport_text(&e),
            };
            if attempt >= self.pacing.retries {
                return Err(CallError::Connector(ConnectorError::Transient(format!("Salesforce login: {failure}"))));
            }
            tokio::time::sleep(self.pacing.backoff_now(attempt)).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use crmsync_domain::endpoint::{OAuthFlow, SecretSource};

    use super::*;

    #[test]
    fn a_login_checks_its_url_and_reads_its_secret_before_any_request() {
        let oauth = |url: &str, var: &str| OAuth {
            login_url: url.into(),
            flow: OAuthFlow::ClientCredentials { client_id: "app".into(), client_secret: SecretSource::Env(var.into()) },
        };
        let err = Login::new(&oauth("http://login.example.com", "PATH"), Duration::from_secs(5), Pacing::default()).unwrap_err();
        assert!(matches!(&err, ConnectorError::Fatal(m) if m.contains("plain http")), "{err}");
        let err = Login::new(&oauth("https://login.salesforce.com", "CRMSYNC_LOGIN_TEST_UNSET"), Duration::from_secs(5), Pacing::default())
            .unwrap_err();
        assert!(matches!(&err, ConnectorError::Fatal(m) if m.contains("CRMSYNC_LOGIN_TEST_UNSET")), "{err}");
        let login = Login::new(&oauth("http://127.0.0.1:1", "PATH"), Duration::from_secs(5), Pacing::default()).unwrap();
        assert!(!login.can_act_as());
        let secret = std::env::var("PATH").unwrap();
        assert!(!format!("{login:?}").contains(&secret), "the secret is never shown");
    }
}
