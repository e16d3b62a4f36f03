//! Which lane a system call is made for, so that the gates in front of an
//! API can tell the batch lane's calls from the rest (I8: the batch lane
//! stops at 90% of a connection's daily API allowance, the immediate lane
//! and detection may use the rest).
//!
//! The lane travels with the work, not through every connector method: a
//! tier runs a message's work [`in_lane`], and a connector's gate asks
//! [`current`]. It is a task-local value, so it follows the work through
//! every `.await` of that task (the connectors' own concurrency, joined
//! futures and buffered streams, stays in the task); work outside any lane
//! (detection, sweeps, the operator's commands) counts as immediate.

use std::future::Future;

use crmsync_domain::Lane;

tokio::task_local! {
    static CALL_LANE: Lane;
}

/// Runs `work` with its system calls counted against `lane`.
pub async fn in_lane<F: Future>(lane: Lane, work: F) -> F::Output {
    CALL_LANE.scope(lane, work).await
}

/// The lane of the work making a call now; immediate outside any.
pub fn current() -> Lane {
    CALL_LANE.try_with(|l| *l).unwrap_or(Lane::Immediate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lane_follows_the_work_and_defaults_to_immediate() {
        assert_eq!(current(), Lane::Immediate);
        let seen = in_lane(Lane::Batch, async {
            tokio::task::yield_now().await;
            // Joined futures, as a connector's concurrent calls are.
            let joined = tokio::join!(async { current() }, async { current() });
            (current(), joined)
        })
        .await;
        assert_eq!(seen, (Lane::Batch, (Lane::Batch, Lane::Batch)));
        assert_eq!(current(), Lane::Immediate, "outside the work again");
    }
}
