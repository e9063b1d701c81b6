//! Injected failures: each a probability per admitted request, drawn from a seeded RNG.

use serde::{Deserialize, Serialize};

use super::SimError;

/// Probabilities (0.0..=1.0, summing to at most 1) of each fault per admitted request.
/// One uniform draw per request picks at most one fault, so the same seed and the
/// same request sequence give the same faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// MutexOperation.TaskRunning instead of processing.
    pub mutex: f64,
    /// OperationDenied.InstanceOperationInProgress instead of processing.
    pub in_progress: f64,
    /// InternalServerError instead of processing.
    pub internal: f64,
    /// The connection closes without a reply and nothing changes.
    pub drop_before: f64,
    /// The request is processed (the change is made) and the connection closes without a reply.
    pub drop_after: f64,
}

/// The fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Mutex,
    InProgress,
    Internal,
    DropBefore,
    DropAfter,
}

impl Fault {
    /// The API error the fault replies with, for the ones that reply.
    pub(crate) fn error(self) -> Option<(&'static str, &'static str)> {
        match self {
            Fault::Mutex => Some(("MutexOperation.TaskRunning", "An identical job is running.")),
            Fault::InProgress => Some((
                "OperationDenied.InstanceOperationInProgress",
                "The instance has an operation in progress. Please try again later.",
            )),
            Fault::Internal => Some(("InternalServerError", "Internal error.")),
            Fault::DropBefore | Fault::DropAfter => None,
        }
    }
}

impl Faults {
    fn table(&self) -> [(f64, Fault, &'static str); 5] {
        [
            (self.mutex, Fault::Mutex, "mutex"),
            (self.in_progress, Fault::InProgress, "in_progress"),
            (self.internal, Fault::Internal, "internal"),
            (self.drop_before, Fault::DropBefore, "drop_before"),
            (self.drop_after, Fault::DropAfter, "drop_after"),
        ]
    }

    /// Each probability within 0..=1 and their sum at most 1.
    pub fn validate(&self) -> Result<(), SimError> {
        let mut sum = 0.0;
        for (p, _, name) in self.table() {
            if !(0.0..=1.0).contains(&p) {
                return Err(SimError::Config(format!(
                    "fault probability {name} = {p} is not between 0 and 1"
                )));
            }
            sum += p;
        }
        if sum > 1.0 + 1e-9 {
            return Err(SimError::Config(format!(
                "fault probabilities add up to {sum}, more than 1"
            )));
        }
        Ok(())
    }

    /// The fault for a uniform draw `u` in 0..1: the probabilities stacked in a fixed order.
    pub(crate) fn pick(&self, u: f64) -> Option<Fault> {
        let mut edge = 0.0;
        for (p, fault, _) in self.table() {
            edge += p;
            if u < edge {
                return Some(fault);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_by_stacked_probabilities() {
        let faults = Faults {
            mutex: 0.1,
            in_progress: 0.1,
            internal: 0.1,
            drop_before: 0.1,
            drop_after: 0.1,
        };
        assert_eq!(faults.pick(0.05), Some(Fault::Mutex));
        assert_eq!(faults.pick(0.15), Some(Fault::InProgress));
        assert_eq!(faults.pick(0.25), Some(Fault::Internal));
        assert_eq!(faults.pick(0.35), Some(Fault::DropBefore));
        assert_eq!(faults.pick(0.45), Some(Fault::DropAfter));
        assert_eq!(faults.pick(0.55), None);
        assert_eq!(Faults::default().pick(0.0), None);
        let all = Faults {
            internal: 1.0,
            ..Faults::default()
        };
        assert_eq!(all.pick(0.999_999), Some(Fault::Internal));
    }

    #[test]
    fn rejects_impossible_probabilities() {
        assert!(Faults::default().validate().is_ok());
        let over = Faults {
            mutex: 0.6,
            internal: 0.6,
            ..Faults::default()
        };
        assert!(
            over.validate()
                .unwrap_err()
                .to_string()
                .contains("more than 1")
        );
        let negative = Faults {
            drop_after: -0.1,
            ..Faults::default()
        };
        assert!(
            negative
                .validate()
                .unwrap_err()
                .to_string()
                .contains("drop_after")
        );
    }
}
