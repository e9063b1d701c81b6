//! The stored words ([`crate::states`]) against the schema the migrations build.

pub use crate::states::{ItemStatus, JobKind, JobState, RunState, Verified};
pub(super) use crate::states::{PowerState, TemplateKind, TemplateState};

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
        // Every kind's action may be stored, and only actions of the vocabulary
        // (DescribeKeyPairs and DescribeRegions are in the list from 0002 on, never queued).
        let stored = check_list(&store, "jobs", "action").await;
        for kind in JobKind::ALL {
            assert!(stored.contains(&kind.action().name().to_string()), "{kind}");
        }
        for name in &stored {
            assert!(crate::cvm::Action::from_name(name).is_some(), "{name}");
        }
        assert_eq!(
            check_list(&store, "jobs", "kind").await,
            words(JobKind::ALL, JobKind::as_str)
        );
        assert_eq!(
            check_list(&store, "template_changes", "kind").await,
            words(TemplateKind::ALL, TemplateKind::as_str)
        );
        assert_eq!(
            check_list(&store, "template_changes", "state").await,
            words(TemplateState::ALL, TemplateState::as_str)
        );
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
