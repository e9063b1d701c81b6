//! What a refused request means for its job: a pure function of the job, the
//! refusal and the configuration. It returns the [`Outcome`] to record and the
//! [`Effects`] the caller applies (counters, pacing feedback, stopping the run).

use rand::Rng;

use crate::delay;
use crate::store::queue::{ErrorInfo, Outcome, QueuedJob};
use crate::taxonomy::{ErrorClass, classify};

use super::action::{JobAction, Refused};
use super::pacer::Feedback;
use super::{ExecConfig, StopReason};

/// What deciding about one refusal asks of the executor besides recording it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Effects {
    /// A Retry-class failure (counted as a retry).
    pub retried: bool,
    /// What the reply said about the pace.
    pub feedback: Feedback,
    /// The job was split for isolation.
    pub split: bool,
    /// Dispatching must stop.
    pub halt: Option<StopReason>,
}

/// The outcome of a refused attempt of `job`, decided at `now` (Unix ms).
pub(super) fn decide(
    action: &dyn JobAction,
    job: &QueuedJob,
    refused: &Refused,
    config: &ExecConfig,
    rng: &mut impl Rng,
    now: i64,
) -> (Outcome, Effects) {
    let error = ErrorInfo {
        code: refused.code.clone(),
        message: refused.message.clone(),
    };
    let classification = classify(job.action, &refused.code);
    let mut effects = Effects {
        retried: false,
        feedback: Feedback::Passed,
        split: false,
        halt: None,
    };
    let outcome = match classification.class {
        ErrorClass::Retry => {
            effects.retried = true;
            let failures = job.attempts as u32 + 1;
            let give_up = failures >= config.max_attempts;
            // One instance stuck in an operation must not fail the rest of its batch.
            let children = (give_up && classification.is_instance_condition())
                .then(|| action.split(job, classification, &refused.message))
                .flatten();
            match children {
                Some(children) => {
                    effects.split = true;
                    Outcome::Split { error, children }
                }
                None => {
                    let wait =
                        delay::retry_delay_with(failures, config.retry_base, config.retry_cap, rng);
                    Outcome::Retry {
                        error,
                        transport: refused.transport,
                        next_attempt_at: now + wait.as_millis() as i64,
                        give_up,
                    }
                }
            }
        }
        ErrorClass::Throttle => {
            effects.feedback = Feedback::for_code(&refused.code);
            Outcome::Throttled {
                error,
                next_attempt_at: now + config.throttle_delay.as_millis() as i64,
            }
        }
        ErrorClass::Isolate => match action.split(job, classification, &refused.message) {
            Some(children) => {
                effects.split = true;
                Outcome::Split { error, children }
            }
            None => Outcome::Fail { error },
        },
        ErrorClass::Fatal => {
            effects.halt = Some(StopReason::Fatal {
                code: refused.code.clone(),
                message: refused.message.clone(),
                request_id: refused.request_id.clone(),
            });
            Outcome::Fatal { error }
        }
    };
    (outcome, effects)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::cvm::Action;
    use crate::executor::action::job_action;

    fn job(instances: usize, attempts: i64) -> QueuedJob {
        QueuedJob {
            id: 7,
            kind: crate::states::JobKind::Unbind,
            action: Action::DisassociateInstancesKeyPairs,
            region: "ap-guangzhou".into(),
            account: None,
            force_stop: false,
            instance_ids: (0..instances).map(|n| format!("ins-{n:08x}")).collect(),
            key_ids: vec!["skey-00000001".into()],
            payload: None,
            attempts,
            pair_count: instances as i64,
        }
    }

    fn refused(code: &str) -> Refused {
        Refused {
            code: code.into(),
            message: "m".into(),
            request_id: Some("r".into()),
            http_status: Some(200),
            transport: false,
        }
    }

    fn run(job: &QueuedJob, code: &str) -> (Outcome, Effects) {
        let action = job_action(job.kind).unwrap();
        let config = ExecConfig::default();
        decide(
            action,
            job,
            &refused(code),
            &config,
            &mut StdRng::seed_from_u64(1),
            1_000,
        )
    }

    #[test]
    fn retry_waits_then_gives_up_at_the_budget() {
        let (outcome, effects) = run(&job(2, 0), "MutexOperation.TaskRunning");
        assert!(
            matches!(outcome, Outcome::Retry { give_up: false, next_attempt_at, .. } if next_attempt_at > 1_000)
        );
        assert!(effects.retried && effects.halt.is_none());
        let (outcome, _) = run(&job(2, 9), "MutexOperation.TaskRunning");
        assert!(matches!(outcome, Outcome::Retry { give_up: true, .. }));
    }

    #[test]
    fn a_stuck_instance_is_split_off_when_the_budget_is_spent() {
        let (outcome, effects) = run(&job(4, 9), "OperationDenied.InstanceOperationInProgress");
        assert!(matches!(outcome, Outcome::Split { ref children, .. } if children.len() == 2));
        assert!(effects.split && effects.retried);
    }

    #[test]
    fn throttles_give_feedback_and_fatal_halts_without_failing() {
        let (outcome, effects) = run(&job(1, 0), "RequestLimitExceeded");
        assert!(matches!(outcome, Outcome::Throttled { .. }));
        assert_eq!(effects.feedback, Feedback::Throttled);
        let (outcome, effects) = run(&job(1, 0), "RequestLimitExceeded.UinLimitExceeded");
        assert!(matches!(outcome, Outcome::Throttled { .. }));
        assert_eq!(effects.feedback, Feedback::ThrottledAccount);
        let (outcome, effects) = run(&job(3, 0), "AuthFailure.SignatureFailure");
        assert!(matches!(outcome, Outcome::Fatal { .. }));
        assert!(
            matches!(effects.halt, Some(StopReason::Fatal { ref code, .. }) if code == "AuthFailure.SignatureFailure")
        );
    }

    #[test]
    fn isolation_splits_a_batch_and_fails_a_single_pair() {
        let (outcome, _) = run(&job(3, 0), "UnsupportedOperation.InstanceStateRunning");
        assert!(matches!(outcome, Outcome::Split { .. }));
        let (outcome, effects) = run(&job(1, 0), "UnsupportedOperation.InstanceStateRunning");
        assert!(matches!(outcome, Outcome::Fail { .. }));
        assert!(!effects.split);
    }
}
