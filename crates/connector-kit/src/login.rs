//! The Salesforce login as a token source of its own: the token endpoint,
//! the flow's credentials and the token cache. Salesforce, Account
//! Engagement and the Pub/Sub API all take Salesforce tokens, so every
//! connector logs in through this.
//!
//! A login is a call like any other ([`EndpointKind::Auth`]): it goes
//! through the connector's [`Sender`], so its retries and gates are the
//! same. Tokens and credentials stay in `SecretString`s, so neither a log
//! line nor a span can carry them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use crmsync_connector::ConnectorError;
use crmsync_domain::endpoint::OAuth;
use crmsync_wire::salesforce::{ApiError, OAuthError, TokenResponse};
use reqwest::header::ACCEPT;
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

use crate::auth::{self, Credentials, Token, TokenCache};
use crate::client::{check_base_url, client, transport_text};
use crate::gate::{CallOutcome, CallResult, EndpointKind};
use crate::send::{Attempted, CallError, Exchange, Judgement, Sender, Verdict};

/// Logs in to one org and keeps the tokens, one per user, shared by every
/// call so that one login serves them all.
#[derive(Debug)]
pub struct Login {
    client: reqwest::Client,
    login_url: String,
    creds: Credentials,
    tokens: TokenCache,
}

impl Login {
    /// Checks the login URL (https, or plain http to this machine only) and
    /// reads the flow's secret; no request is made yet.
    pub fn new(oauth: &OAuth, timeout: Duration) -> Result<Self, ConnectorError> {
        let login_url = check_base_url(&oauth.login_url)?;
        let creds = Credentials::load(&oauth.flow)?;
        Ok(Login { client: client(timeout)?, login_url, creds, tokens: TokenCache::default() })
    }

    /// Whether this flow can log in as another user.
    pub fn can_act_as(&self) -> bool {
        self.creds.can_act_as()
    }

    /// The token for `user` (the integration user when `None`), logging in
    /// through `sender` if there is none yet.
    pub async fn token<F>(&self, sender: &Sender, user: Option<&str>) -> Result<Arc<Token>, CallError<F>> {
        if let Some(t) = self.tokens.get(user).await {
            return Ok(t);
        }
        let token = Arc::new(sender.run(&mut TokenRequest { login: self, user }).await.map_err(CallError::widen)?);
        self.tokens.put(user, token.clone()).await;
        Ok(token)
    }

    /// Forgets `stale` (a token an answer refused), unless another call has
    /// already replaced it; the next [`Login::token`] logs in again.
    pub async fn forget(&self, user: Option<&str>, stale: &Arc<Token>) {
        self.tokens.forget(user, stale).await;
    }
}

/// One login, as the send loop drives it.
#[derive(Debug)]
struct TokenRequest<'a> {
    login: &'a Login,
    user: Option<&'a str>,
}

impl TokenRequest<'_> {
    /// One POST to the token endpoint, judged.
    async fn post(&self) -> Attempted<Token, Infallible> {
        let done = |verdict, result| Attempted { verdict, outcome: CallOutcome::of(result) };
        let login = self.login;
        let form = match auth::token_form(&login.creds, &login.login_url, self.user, Utc::now().timestamp()) {
            Ok(form) => form,
            Err(e) => return done(Verdict::Fail(e.into()), CallResult::NotSent),
        };
        let exposed: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.expose_secret())).collect();
        let url = format!("{}/services/oauth2/token", login.login_url);
        let span = tracing::info_span!("salesforce_http", method = "POST", path = "/services/oauth2/token", status = tracing::field::Empty);
        let retry = |why: String| Verdict::Retry(CallError::Connector(ConnectorError::Transient(format!("Salesforce login: {why}"))));
        let resp = match login.client.post(&url).header(ACCEPT, "application/json").form(&exposed).send().instrument(span.clone()).await {
            Ok(resp) => resp,
            Err(e) => return done(retry(transport_text(&e)), CallResult::Lost),
        };
        let status = resp.status().as_u16();
        span.record("status", status);
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        if (200..300).contains(&status) {
            return match token_of(&body) {
                Ok(token) => done(Verdict::Done(token), CallResult::Done),
                Err(e) => done(Verdict::Fail(e.into()), CallResult::Done),
            };
        }
        if status < 500
            && let Ok(o) = serde_json::from_slice::<OAuthError>(&body)
        {
            return done(Verdict::Fail(CallError::Login(o)), CallResult::Failed(Judgement::Refused));
        }
        if status < 500 && status != 429 {
            let failed =
                ConnectorError::Fatal(format!("Salesforce login failed: {}", ApiError::summary(&ApiError::list_of(status, &body))));
            return done(Verdict::Fail(failed.into()), CallResult::Failed(Judgement::Fatal));
        }
        done(retry(format!("the token endpoint answered {status}")), CallResult::Failed(Judgement::Retry { unprocessed: status == 429 }))
    }
}

/// A token answer read.
fn token_of(body: &[u8]) -> Result<Token, ConnectorError> {
    let t: TokenResponse =
        serde_json::from_slice(body).map_err(|e| ConnectorError::Fatal(format!("the Salesforce token answer cannot be read: {e}")))?;
    let instance_url = check_base_url(&t.instance_url)?;
    let user_id = t.user_id().ok_or_else(|| ConnectorError::Fatal("the Salesforce token answer names no user".into()))?.to_owned();
    let org_id = t.org_id().unwrap_or_default().to_owned();
    Ok(Token { access: SecretString::from(t.access_token), instance_url, user_id, org_id })
}

impl Exchange for TokenRequest<'_> {
    type Output = Token;
    type Failure = Infallible;
    /// A login needs no token.
    type Ready = ();

    fn kind(&self) -> EndpointKind {
        EndpointKind::Auth
    }

    async fn prepare(&mut self) -> Result<(), CallError<Infallible>> {
        Ok(())
    }

    async fn attempt(&mut self, _: &()) -> Attempted<Token, Infallible> {
        self.post().await
    }

    async fn token_refused(&mut self, _: ()) {}
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
        let err = Login::new(&oauth("http://login.example.com", "PATH"), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(&err, ConnectorError::Fatal(m) if m.contains("plain http")), "{err}");
        let err = Login::new(&oauth("https://login.salesforce.com", "CRMSYNC_LOGIN_TEST_UNSET"), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(&err, ConnectorError::Fatal(m) if m.contains("CRMSYNC_LOGIN_TEST_UNSET")), "{err}");
        let login = Login::new(&oauth("http://127.0.0.1:1", "PATH"), Duration::from_secs(5)).unwrap();
        assert!(!login.can_act_as());
        let secret = std::env::var("PATH").unwrap();
        assert!(!format!("{login:?}").contains(&secret), "the secret is never shown");
    }

    #[test]
    fn a_token_answer_names_the_instance_and_the_user() {
        let ok = br#"{"access_token":"00D!tok","instance_url":"https://acme.my.salesforce.com/","id":"https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001Sv6eAAC","token_type":"Bearer","issued_at":"1"}"#;
        let t = token_of(ok).unwrap();
        assert_eq!((t.instance_url(), t.user_id()), ("https://acme.my.salesforce.com", "005xx000001Sv6eAAC"));
        assert_eq!(t.org_id(), "00Dxx0000001gPLEAY");
        assert!(!format!("{t:?}").contains("00D!tok"));
        assert!(token_of(b"{}").is_err());
    }
}
