//! OAuth 2.0 credentials and tokens: the client-credentials flow (the
//! connected app runs as its integration user) and the JWT bearer flow (an
//! RS256 assertion for any user, which is how a write "as" a CSM is made).
//!
//! Secrets are read once at start from where the settings point (an
//! environment variable or a file) and kept in [`SecretString`]s, whose
//! `Debug` is redacted, so neither a log line nor a span can carry them.
//! Tokens are kept the same way.

use std::collections::HashMap;
use std::sync::Arc;

use crmsync_connector::ConnectorError;
use crmsync_domain::endpoint::{OAuthFlow, SecretSource};
use crmsync_wire::salesforce::{JWT_BEARER_GRANT, JwtClaims};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

/// How long a JWT assertion is valid: Salesforce accepts at most a few minutes.
const ASSERTION_TTL_SECS: i64 = 180;

/// Reads a secret from where the settings say. The file's content is
/// trimmed (a trailing newline is not part of the secret).
pub(crate) fn read_secret(source: &SecretSource) -> Result<SecretString, ConnectorError> {
    let value = match source {
        SecretSource::Env(var) => std::env::var(var)
            .map_err(|_| ConnectorError::Fatal(format!("the Salesforce credential's environment variable {var} is not set")))?,
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| ConnectorError::Fatal(format!("the Salesforce credential file {path} cannot be read: {e}")))?,
    };
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ConnectorError::Fatal(format!("the Salesforce credential from {source:?} is empty")));
    }
    Ok(SecretString::from(trimmed))
}

/// A private key for signing assertions. `EncodingKey` holds the key
/// material, so it is only ever shown redacted.
#[derive(Clone)]
pub(crate) struct SigningKey(EncodingKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

/// The flow and its secrets, ready to log in.
#[derive(Debug, Clone)]
pub(crate) enum Credentials {
    ClientCredentials { client_id: String, client_secret: SecretString },
    JwtBearer { client_id: String, username: String, key: SigningKey },
}

impl Credentials {
    /// Reads the flow's secret (and checks a private key parses, so a bad key
    /// is reported at start rather than at the first login).
    pub fn load(flow: &OAuthFlow) -> Result<Self, ConnectorError> {
        Ok(match flow {
            OAuthFlow::ClientCredentials { client_id, client_secret } => {
                Credentials::ClientCredentials { client_id: client_id.clone(), client_secret: read_secret(client_secret)? }
            }
            OAuthFlow::JwtBearer { client_id, username, private_key } => {
                let pem = read_secret(private_key)?;
                let key = EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes())
                    .map_err(|e| ConnectorError::Fatal(format!("the Salesforce JWT private key is not an RSA key in PEM: {e}")))?;
                Credentials::JwtBearer { client_id: client_id.clone(), username: username.clone(), key: SigningKey(key) }
            }
        })
    }

    /// Whether this flow can log in as another user.
    pub fn can_act_as(&self) -> bool {
        matches!(self, Credentials::JwtBearer { .. })
    }
}

/// The claims of an assertion for `username`.
pub(crate) fn claims(client_id: &str, username: &str, login_url: &str, now_secs: i64) -> JwtClaims {
    JwtClaims { iss: client_id.to_owned(), sub: username.to_owned(), aud: login_url.to_owned(), exp: now_secs + ASSERTION_TTL_SECS }
}

/// The form of a token request: for the integration user (`as_user` =
/// `None`) or, with the JWT bearer flow, for the user named. The values
/// carry secrets: they go into the request body and nowhere else.
pub(crate) fn token_form(
    creds: &Credentials,
    login_url: &str,
    as_user: Option<&str>,
    now_secs: i64,
) -> Result<Vec<(&'static str, SecretString)>, ConnectorError> {
    match creds {
        Credentials::ClientCredentials { client_id, client_secret } => {
            if as_user.is_some() {
                return Err(ConnectorError::Fatal("the client-credentials flow cannot log in as another user".into()));
            }
            Ok(vec![
                ("grant_type", SecretString::from("client_credentials")),
                ("client_id", SecretString::from(client_id.as_str())),
                ("client_secret", client_secret.clone()),
            ])
        }
        Credentials::JwtBearer { client_id, username, key } => {
            let sub = as_user.unwrap_or(username);
            let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(client_id, sub, login_url, now_secs), &key.0)
                .map_err(|e| ConnectorError::Fatal(format!("cannot sign the JWT bearer assertion: {e}")))?;
            Ok(vec![("grant_type", SecretString::from(JWT_BEARER_GRANT)), ("assertion", SecretString::from(assertion))])
        }
    }
}

/// A token and what it is good for. Its `Debug` shows the access token
/// redacted.
#[derive(Debug)]
pub struct Token {
    pub(crate) access: SecretString,
    /// Where this org's REST API lives.
    pub(crate) instance_url: String,
    /// The user the token acts as.
    pub(crate) user_id: String,
    /// The org the user is in (empty if the token answer did not say).
    pub(crate) org_id: String,
}

impl Token {
    /// The bearer token, for an `Authorization` header and nothing else.
    pub fn access(&self) -> &SecretString {
        &self.access
    }

    /// Where the org's REST API lives (`instance_url`).
    pub fn instance_url(&self) -> &str {
        &self.instance_url
    }

    /// The Salesforce user the token acts as, as the token answer names it.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The org the token's user is in (from the token answer's `id` URL;
    /// empty if it named none): the Pub/Sub API's `tenantid`.
    pub fn org_id(&self) -> &str {
        &self.org_id
    }
}

/// Tokens by user: `None` for the integration user, `Some(username)` for
/// users written as. Shared by every call, so one login serves them all.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<Option<String>, Arc<Token>>>,
}

impl TokenCache {
    pub async fn get(&self, user: Option<&str>) -> Option<Arc<Token>> {
        self.tokens.lock().await.get(&user.map(str::to_owned)).cloned()
    }

    pub async fn put(&self, user: Option<&str>, token: Arc<Token>) {
        self.tokens.lock().await.insert(user.map(str::to_owned), token);
    }

    /// Forgets `stale` (the token an answer refused), unless another call
    /// has already replaced it with a fresh one.
    pub async fn forget(&self, user: Option<&str>, stale: &Arc<Token>) {
        let mut tokens = self.tokens.lock().await;
        let key = user.map(str::to_owned);
        if tokens.get(&key).is_some_and(|t| Arc::ptr_eq(t, stale)) {
            tokens.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_name_the_app_the_user_and_the_login_url_for_three_minutes() {
        let c = claims("3MVG9app", "jane@example.com", "https://login.salesforce.com", 1_700_000_000);
        assert_eq!(c.iss, "3MVG9app");
        assert_eq!(c.sub, "jane@example.com");
        assert_eq!(c.aud, "https://login.salesforce.com");
        assert_eq!(c.exp, 1_700_000_180);
    }

    #[test]
    fn secrets_are_read_trimmed_and_never_shown() {
        let path = std::env::temp_dir().join(format!("crmsync-sf-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret-value\n").unwrap();
        let s = read_secret(&SecretSource::File(path.to_string_lossy().into_owned())).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.expose_secret(), "s3cret-value");
        let creds = Credentials::ClientCredentials { client_id: "app".into(), client_secret: s };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let form = token_form(&creds, "https://login.salesforce.com", None, 0).unwrap();
        assert!(!format!("{form:?}").contains("s3cret"));
        assert!(token_form(&creds, "https://login.salesforce.com", Some("jane"), 0).is_err());
        assert!(!creds.can_act_as());
    }

    #[test]
    fn a_missing_secret_is_fatal_and_names_where_it_was_looked_for() {
        let err = read_secret(&SecretSource::Env("CRMSYNC_SF_TEST_SURELY_UNSET".into())).unwrap_err();
        assert!(matches!(&err, ConnectorError::Fatal(m) if m.contains("CRMSYNC_SF_TEST_SURELY_UNSET")));
    }

    #[test]
    fn a_private_key_that_is_not_pem_is_refused_at_start() {
        let path = std::env::temp_dir().join(format!("crmsync-sf-key-{}", std::process::id()));
        std::fs::write(&path, "not a key").unwrap();
        let flow = OAuthFlow::JwtBearer {
            client_id: "app".into(),
            username: "integration@example.com".into(),
            private_key: SecretSource::File(path.to_string_lossy().into_owned()),
        };
        let err = Credentials::load(&flow).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, ConnectorError::Fatal(_)));
    }
}
