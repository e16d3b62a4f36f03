//! The HTTP client every connector speaks through: TLS verified against the
//! platform's roots, no redirects, and which URLs may be handed a token at
//! all; and how a transport failure and an answer's `Date` are read.

use std::time::Duration;

use chrono::{DateTime, Utc};
use crmsync_connector::ConnectorError;
use reqwest::header::{DATE, HeaderMap};

/// Installs rustls's crypto provider once per process. reqwest is built
/// without one (`rustls-no-provider`), so ring is chosen here; another
/// component may have installed one first, which is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Checks a base URL the connector will send credentials or tokens to:
/// HTTPS (verified against the platform's roots) anywhere, plain HTTP only
/// to this machine (the sandbox server). Returns it without a trailing slash.
pub fn check_base_url(url: &str) -> Result<String, ConnectorError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ConnectorError::Fatal(format!("{url:?} is not a URL: {e}")))?;
    let host = parsed.host_str().ok_or_else(|| ConnectorError::Fatal(format!("{url} names no host")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(ConnectorError::Fatal(format!(
                "{url} uses plain http: only https is allowed, except to this machine (localhost, 127.0.0.1, ::1)"
            )));
        }
        other => return Err(ConnectorError::Fatal(format!("{url} uses {other}: only https is allowed"))),
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Whether a host (as a URL spells it) is this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// An HTTP client for an API that is handed tokens: TLS verified against
/// the platform's roots (rustls with ring), no redirects, the timeouts given.
pub fn client(timeout: Duration) -> Result<reqwest::Client, ConnectorError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        // The APIs never redirect; following one could leave https or
        // send a token elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("crmsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConnectorError::Fatal(format!("cannot build the HTTP client: {e}")))
}

/// A transport failure as text (never the URL's query, which reqwest
/// includes in its `Display`).
pub fn transport_text(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_owned() } else { format!("{kind}: {detail}") }
}

/// The server's time when it handled the request, at the latest: the
/// answer's `Date` (whole seconds, rounded down) less the round trip, or
/// the local clock if there is no `Date`.
pub fn server_time(headers: &HeaderMap, round_trip: Duration) -> DateTime<Utc> {
    let rtt = chrono::Duration::from_std(round_trip).unwrap_or_default();
    let date =
        headers.get(DATE).and_then(|v| v.to_str().ok()).and_then(|s| DateTime::parse_from_rfc2822(s).ok()).map(|d| d.with_timezone(&Utc));
    date.unwrap_or_else(Utc::now) - rtt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_this_machine() {
        assert_eq!(check_base_url("https://login.salesforce.com/").unwrap(), "https://login.salesforce.com");
        assert_eq!(check_base_url("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert!(check_base_url("http://localhost:3000/").is_ok());
        assert!(check_base_url("http://[::1]:3000").is_ok());
        for bad in ["http://login.salesforce.com", "http://10.0.0.5:8080", "http://localhost.evil.com", "ftp://localhost", "nonsense"] {
            assert!(matches!(check_base_url(bad), Err(ConnectorError::Fatal(_))), "{bad} was allowed");
        }
    }

    #[test]
    fn the_server_time_is_the_date_less_the_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert(DATE, "Wed, 01 May 2024 10:20:30 GMT".parse().unwrap());
        let t = server_time(&headers, Duration::from_millis(250));
        assert_eq!(t, DateTime::parse_from_rfc3339("2024-05-01T10:20:29.750Z").unwrap().with_timezone(&Utc));
        let before = Utc::now();
        assert!(server_time(&HeaderMap::new(), Duration::ZERO) >= before);
    }
}
