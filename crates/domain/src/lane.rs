//! The two lanes of R7: small change sets are synced at once, large ones are
//! queued and paced by the connection's batch budget.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    #[default]
    Immediate,
    Batch,
}

impl Lane {
    /// The lane for one detection pass that found `changed` records: more
    /// than `threshold` (400 by default) goes to the batch lane.
    pub fn for_pass(changed: usize, threshold: usize) -> Lane {
        if changed > threshold { Lane::Batch } else { Lane::Immediate }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Immediate => "immediate",
            Lane::Batch => "batch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_threshold_goes_to_the_batch_lane() {
        assert_eq!(Lane::for_pass(400, 400), Lane::Immediate);
        assert_eq!(Lane::for_pass(401, 400), Lane::Batch);
        assert_eq!(Lane::for_pass(0, 400), Lane::Immediate);
        assert_eq!(Lane::for_pass(11, 10), Lane::Batch);
    }
}
