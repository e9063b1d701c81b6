//! The states a run, a job and an item can be in, as stored: one enum each, whose
//! words are exactly the database's CHECK lists (a test compares them with the schema
//! the migrations build).

use std::fmt;

/// Declares a state enum stored as a word: `as_str`, `ALL`, `Display`, `FromStr`.
macro_rules! stored_words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word stored in the database and printed in reports.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == s)
                    .ok_or_else(|| {
                        let words: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        format!("unknown {} {s:?}: expected one of {}", stringify!($name), words.join(", "))
                    })
            }
        }
    };
}

stored_words! {
    /// Where a run is: planned -> running -> finished; stopped = ended early, resumable.
    RunState {
        Planned => "planned",
        Running => "running",
        Stopped => "stopped",
        Finished => "finished",
    }
}

stored_words! {
    /// Where a job is.
    JobState {
        /// Waits for `next_attempt_at` and for the jobs it depends on.
        Queued => "queued",
        /// An attempt is open.
        InFlight => "in_flight",
        Succeeded => "succeeded",
        Failed => "failed",
        /// Replaced by its children.
        Split => "split",
        /// Never sent: a job it depended on failed.
        Skipped => "skipped",
    }
}

impl JobState {
    /// True once the job will never be sent again.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::InFlight)
    }
}

stored_words! {
    /// The outcome of one input pair, as stored in `items.status`.
    ItemStatus {
        /// Valid, not yet done.
        Pending => "pending",
        /// A reply with a RequestId covered it.
        Succeeded => "succeeded",
        /// Its job failed for good.
        Failed => "failed",
        /// The row was wrong; never sent.
        Rejected => "rejected",
        /// The same (region, instance, key) appeared earlier; shares that item's outcome.
        Duplicate => "duplicate",
        /// Valid, never sent: a job it waited for failed (the reason says which).
        Skipped => "skipped",
    }
}

impl ItemStatus {
    /// Every status, in the order reports list them.
    pub const REPORT_ORDER: [ItemStatus; 6] = [
        ItemStatus::Succeeded,
        ItemStatus::Failed,
        ItemStatus::Skipped,
        ItemStatus::Rejected,
        ItemStatus::Duplicate,
        ItemStatus::Pending,
    ];

    /// Valid, distinct pairs: the ones the executor works on.
    pub fn is_valid_pair(self) -> bool {
        matches!(
            self,
            ItemStatus::Pending | ItemStatus::Succeeded | ItemStatus::Failed | ItemStatus::Skipped
        )
    }
}

stored_words! {
    /// What the cloud itself says of a pair (`keyfleet verify`), stored in `items.verified`.
    Verified {
        /// The key is no longer in the instance's `LoginSettings.KeyIds`.
        Gone => "gone",
        /// The key is still bound and no operation of ours is pending on it.
        StillBound => "still_bound",
        /// The instance's latest operation is still OPERATING after the wait.
        Operating => "operating",
        /// Our operation's `LatestOperationState` is FAILED and the key is still bound.
        OperationFailed => "operation_failed",
        /// DescribeInstances does not know the instance.
        InstanceMissing => "instance_missing",
        /// A bind item (rotation): the new key is in `LoginSettings.KeyIds` and no
        /// operation is running: confirmed.
        Bound => "bound",
        /// A bind item: the new key is not bound, and no operation of ours failed or runs.
        NotBound => "not_bound",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The words of `CHECK (<column> IN (...))` in a table's schema as migrated.
    async fn check_list(store: &Store, table: &str, column: &str) -> Vec<String> {
        let sql: String = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = ?")
            .bind(table)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let start = sql
            .find(&format!("CHECK ({column} IN ("))
            .unwrap_or_else(|| panic!("{table}.{column} has no CHECK list:\n{sql}"));
        let rest = &sql[start..];
        let list = &rest[rest.find("IN (").unwrap() + 4..rest.find(")").unwrap()];
        list.split(',')
            .map(|w| w.trim().trim_matches('\'').to_string())
            .collect()
    }

    fn words<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> Vec<String> {
        all.iter().map(|v| as_str(*v).to_string()).collect()
    }

    #[tokio::test]
    async fn enums_match_the_schema_check_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.db")).await.unwrap();
        assert_eq!(
            check_list(&store, "runs", "state").await,
            words(RunState::ALL, RunState::as_str)
        );
        assert_eq!(
            check_list(&store, "jobs", "state").await,
            words(JobState::ALL, JobState::as_str)
        );
        assert_eq!(
            check_list(&store, "items", "status").await,
            words(ItemStatus::ALL, ItemStatus::as_str)
        );
        assert_eq!(
            check_list(&store, "items", "verified").await,
            words(Verified::ALL, Verified::as_str)
        );
        // StopInstances and StartInstances are vocabulary before they are jobs: they join
        // the CHECK list with the migration that queues them (issue 21's workflow).
        let actions: Vec<String> = crate::cvm::Action::ALL
            .iter()
            .filter(|a| !a.is_power_operation())
            .map(|a| a.name().to_string())
            .collect();
        assert_eq!(check_list(&store, "jobs", "action").await, actions);
        let mut report_order = ItemStatus::REPORT_ORDER.to_vec();
        report_order.sort();
        assert_eq!(report_order, ItemStatus::ALL);
    }

    #[test]
    fn words_round_trip() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(*state));
        }
        assert!("nonsense".parse::<ItemStatus>().is_err());
        assert_eq!(
            serde_json::to_string(&Verified::OperationFailed).unwrap(),
            "\"operation_failed\""
        );
    }
}
