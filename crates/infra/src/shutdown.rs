//! One shutdown signal, fanned out to every loop of a tier.
//!
//! SIGTERM or SIGINT cancels the token; each loop stops taking new work,
//! finishes (and acks) what it holds, and returns. Callers bound the drain
//! with a grace period.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, only ctrl-c remains; failing that, never.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
