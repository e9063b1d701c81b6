//! A database made by keyfleet 0.1.0 (the first release: schema `0001_init` only),
//! committed in `tests/data/v0_1_0/`, opened by this version: it migrates forward, its
//! runs report as they did (every column 0.1.0 wrote keeps its value), and a run it
//! planned but never executed resumes to completion.
//!
//! The fixture holds four runs made against `samples/fleet-small.json`: 1 finished (7
//! pairs succeeded), 2 planned with rejected rows and a duplicate, 3 planned and never
//! started, 4 finished with two failures (RUNNING, Windows) after an isolation split.
//!
//! Databases of later versions are built here instead ([`database_before`]: this
//! version's migrations below the one that followed, rows inserted as that version
//! wrote them): the version before rotation (schema 0004) and the version before job
//! kinds (schema 0006, a `--keep-one-key` rotation stopped mid-way).

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyfleet::sim::{Fleet, SimConfig, audit};

use crate::support::Rehearsal;

const LIMIT: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/v0_1_0")
        .join(name)
}

async fn rehearsal_on_fixture() -> (Rehearsal, Fleet) {
    let fleet = Fleet::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/fleet-small.json"))
        .expect("sample fleet");
    let config = SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, fleet.clone()).await;
    std::fs::copy(fixture("keyfleet.db"), &r.db).expect("copy fixture");
    (r, fleet)
}

/// A new database at the schema of an earlier version: this version's migrations
/// below `version` only, run by the migrator as that version ran them.
async fn database_before(db: &Path, version: i64) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let mut migrator =
        sqlx::migrate::Migrator::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
            .await
            .unwrap();
    migrator.migrations = std::borrow::Cow::Owned(
        migrator
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect(),
    );
    migrator.run(&pool).await.unwrap();
    pool
}

/// Every field 0.1.0 wrote in `old` has the same value in `new` (new fields may be added).
fn assert_superset(old: &serde_json::Value, new: &serde_json::Value, what: &str) {
    match (old, new) {
        (serde_json::Value::Object(old), serde_json::Value::Object(new)) => {
            for (key, value) in old {
                let Some(now) = new.get(key) else {
                    panic!("{what}: field {key:?} is gone");
                };
                assert_superset(value, now, &format!("{what}.{key}"));
            }
        }
        (serde_json::Value::Array(old), serde_json::Value::Array(new)) => {
            assert_eq!(old.len(), new.len(), "{what}: length");
            for (n, (a, b)) in old.iter().zip(new).enumerate() {
                assert_superset(a, b, &format!("{what}[{n}]"));
            }
        }
        _ => assert_eq!(old, new, "{what}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_0_database_migrates_reports_and_resumes() {
    let (r, fleet) = rehearsal_on_fixture().await;

    let (code, listing, stderr) = r.run(&["runs"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    for run in 1..=4 {
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&run.to_string())),
            "run {run} listed:\n{listing}"
        );
    }

    for run in ["1", "2", "3", "4"] {
        let (code, report, stderr) = r.run(&["report", run, "--format", "json"], LIMIT).await;
        assert_eq!(code, 0, "report {run}: {stderr}");
        let old: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("report-{run}.json"))).unwrap(),
        )
        .unwrap();
        let new: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_superset(&old, &new, &format!("report {run}"));
    }
    let (code, status, stderr) = r.run(&["status", "4", "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("status-4.json")).unwrap()).unwrap();
    let mut new: serde_json::Value = serde_json::from_str(&status).unwrap();
    // Not a fact of the database: `elapsed_ms` of a finished run is fixed, the rest too.
    new.as_object_mut().unwrap().remove("verification");
    assert_superset(&old, &new, "status 4");
    // Attempts 0.1.0 recorded name no endpoint (migration 0006): an unknown one, sent
    // at their `started_at`.
    let rates = new["rates"].as_array().expect("rates");
    assert_eq!(rates.len(), 1, "{rates:#?}");
    assert_eq!(rates[0]["endpoint"], serde_json::Value::Null);
    assert_eq!(rates[0]["requests"], old["requests"]);

    // Run 3 was planned by 0.1.0 and never started: this version executes it.
    let (code, _, stderr) = r.run(&["resume", "3", "--progress", "none"], LIMIT).await;
    assert_eq!(code, 0, "resume 3: {stderr}");
    let (code, status, stderr) = r.run(&["status", "3", "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let endpoints: Vec<&str> = status["rates"]
        .as_array()
        .expect("rates")
        .iter()
        .filter_map(|rate| rate["endpoint"].as_str())
        .collect();
    assert!(
        !endpoints.is_empty() && endpoints.iter().all(|e| e.starts_with(&r.sim.endpoint())),
        "the new attempts name their endpoint: {status}"
    );
    let store = r.store().await;
    let outcomes = crate::support::audit_rows(store.pair_outcomes(3).await.unwrap());
    // The rebuilt tables kept every reference whole.
    let broken: Vec<(String, i64)> =
        sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check")
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    let jobs: Vec<(String, String)> =
        sqlx::query_as("SELECT action, state FROM jobs WHERE run_id = 4 ORDER BY id")
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    assert!(
        jobs.iter()
            .all(|(a, _)| a == "DisassociateInstancesKeyPairs"),
        "{jobs:?}"
    );
    store.close().await;
    assert_eq!(outcomes.len(), 2);
    assert!(
        outcomes.iter().all(|o| o.status == "succeeded"),
        "{outcomes:?}"
    );
    let result = audit::audit(
        &fleet.bindings(),
        &r.sim.fleet().bindings(),
        &outcomes,
        &r.sim.journal(),
    );
    assert!(result.is_clean(), "audit: {:#?}", result.violations);
    assert!(
        !r.sim
            .fleet()
            .bindings()
            .contains(&("ins-00000001".to_string(), "skey-00000009".to_string()))
    );
}

/// A database made by the version before rotation (schema up to 0004: actions,
/// verification, the pacer), with a verified run and a planned one, is opened by this
/// version: migration 0005 rebuilds `items` keeping every value, the verified run
/// reports as it was, and the planned run resumes to completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_version_before_rotation_migrates_reports_and_resumes() {
    let (r, fleet) = rehearsal_on_fixture().await;
    std::fs::remove_file(&r.db).unwrap();
    {
        let pool = database_before(&r.db, 5).await;
        for sql in [
            "INSERT INTO runs (id, created_at, input_path, input_sha256, options, rows_read, pairs,
                               duplicates, rejected, instances, keys, regions, state, finished_at)
             VALUES (1, 1, '/in/a.csv', 'aa', '{}', 2, 1, 0, 1, 1, 1, 1, 'finished', 5),
                    (2, 2, '/in/b.csv', 'bb', '{}', 1, 1, 0, 0, 1, 1, 1, 'planned', NULL)",
            "INSERT INTO jobs (id, run_id, action, region, instance_ids, key_ids, pair_count, state,
                               request_id, created_at, finished_at)
             VALUES (1, 1, 'DisassociateInstancesKeyPairs', 'ap-guangzhou', '[\"ins-00000002\"]',
                     '[\"skey-00000003\"]', 1, 'succeeded', 'req-1', 1, 3),
                    (2, 2, 'DisassociateInstancesKeyPairs', 'ap-guangzhou', '[\"ins-00000001\"]',
                     '[\"skey-00000009\"]', 1, 'queued', NULL, 2, NULL)",
            "INSERT INTO attempts (id, job_id, number, started_at, finished_at, sent_at, outcome, request_id)
             VALUES (1, 1, 1, 2, 3, 2, 'succeeded', 'req-1')",
            "INSERT INTO items (id, run_id, position, region, instance_id, key_id, status, reason,
                                job_id, request_id, verified, verified_at, verify_request_id)
             VALUES (1, 1, 'line 2', 'ap-guangzhou', 'ins-00000002', 'skey-00000003', 'succeeded',
                     NULL, 1, 'req-1', 'gone', 4, 'req-v'),
                    (2, 1, 'line 3', NULL, 'ins-x', 'skey-00000003', 'rejected',
                     'instance id \"ins-x\" is not ins- and 8 characters', NULL, NULL, NULL, NULL, NULL),
                    (3, 2, 'line 2', 'ap-guangzhou', 'ins-00000001', 'skey-00000009', 'pending',
                     NULL, 2, NULL, NULL, NULL, NULL)",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }

    let (code, report, stderr) = r.run(&["report", "1", "--format", "json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{report}");
    assert_eq!(rows[0]["status"], "succeeded");
    assert_eq!(rows[0]["request_id"], "req-1");
    assert_eq!(rows[0]["verified"], "gone");
    assert_eq!(rows[0]["attempts"], 1);
    assert_eq!(rows[1]["status"], "rejected");
    assert!(rows[0]["new_key_id"].is_null());
    let (code, status, stderr) = r.run(&["status", "1", "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pairs"]["succeeded"], 1, "{status}");
    assert_eq!(status["verification"]["gone"], 1, "{status}");
    assert_eq!(status["held"], 0, "{status}");

    let (code, _, stderr) = r.run(&["resume", "2", "--progress", "none"], LIMIT).await;
    assert_eq!(code, 0, "resume 2: {stderr}");
    assert!(
        !r.sim
            .fleet()
            .bindings()
            .contains(&("ins-00000001".to_string(), "skey-00000009".to_string()))
    );
    assert!(
        fleet
            .bindings()
            .contains(&("ins-00000001".to_string(), "skey-00000009".to_string()))
    );
    let store = r.store().await;
    let broken: Vec<(String, i64)> =
        sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check")
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    store.close().await;
}

// The version before job kinds (schema up to 0006): a rotation with `--keep-one-key`
// stopped mid-way, and an interrupted verification round of each payload vintage.

const GZ: &str = "ap-guangzhou";
const SH: &str = "ap-shanghai";
/// The key both runs remove.
const OLD: &str = "skey-0001d000";
/// A second key some instances hold.
const OTHER: &str = "skey-0other00";
const NEW1: &str = "skey-00new001";
const NEW2: &str = "skey-00new002";
const NEW3: &str = "skey-00new003";
/// Run 1 (the version before rotation): plain unbinds in two regions.
const H: &str = "ins-000001a1";
const I: &str = "ins-000001b1";
/// Run 2 (the version before job kinds): X1 and X2 rotated to NEW1, confirmed, one
/// unbind sent; Y1 and Y2 bound to NEW2, confirmation queued; Z's bind queued; E and
/// F (plain unbinds under `--keep-one-key`) waiting for their look.
const X1: &str = "ins-000002a1";
const X2: &str = "ins-000002a2";
const Y1: &str = "ins-000002b1";
const Y2: &str = "ins-000002b2";
const Z: &str = "ins-000002c1";
const E: &str = "ins-000002d1";
const F: &str = "ins-000002d2";

/// A verification item as the earlier versions serialized it (`store::verify::VerifyItem`
/// at 0059a16; before rotation it had no `bind`).
#[derive(serde::Serialize)]
struct OldVerifyItem {
    item_id: i64,
    instance_id: &'static str,
    key_id: &'static str,
    request_id: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    bind: bool,
}

/// A DescribeInstances job's payload as the earlier versions serialized it: the
/// version before rotation wrote no `purpose` (a verification); 0059a16 wrote
/// `verify`, `confirm` or `precheck`.
#[derive(serde::Serialize)]
struct OldPayload {
    #[serde(skip_serializing_if = "Option::is_none")]
    purpose: Option<&'static str>,
    recheck_until: i64,
    items: Vec<OldVerifyItem>,
}

impl OldPayload {
    fn json(&self) -> String {
        serde_json::to_string(self).unwrap()
    }
}

/// A `jobs` row of schema 0006, as the earlier versions inserted and updated it.
struct OldJob {
    id: i64,
    run_id: i64,
    action: &'static str,
    region: &'static str,
    instance_ids: &'static [&'static str],
    key_ids: &'static [&'static str],
    payload: Option<String>,
    state: &'static str,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<(&'static str, &'static str)>,
    request_id: Option<String>,
    created_at: i64,
    finished_at: Option<i64>,
}

impl OldJob {
    /// A queued job of `action` planned or added at `created_at`, never sent.
    fn queued(
        id: i64,
        run_id: i64,
        action: &'static str,
        region: &'static str,
        instance_ids: &'static [&'static str],
        key_ids: &'static [&'static str],
        created_at: i64,
    ) -> OldJob {
        OldJob {
            id,
            run_id,
            action,
            region,
            instance_ids,
            key_ids,
            payload: None,
            state: "queued",
            attempts: 0,
            next_attempt_at: 0,
            last_error: None,
            request_id: None,
            created_at,
            finished_at: None,
        }
    }

    fn payload(mut self, payload: &OldPayload) -> OldJob {
        self.payload = Some(payload.json());
        self
    }

    fn due(mut self, at: i64) -> OldJob {
        self.next_attempt_at = at;
        self
    }

    fn succeeded(mut self, request_id: &str, at: i64) -> OldJob {
        self.state = "succeeded";
        self.request_id = Some(request_id.to_string());
        self.finished_at = Some(at);
        self
    }

    async fn insert(&self, pool: &sqlx::SqlitePool) {
        let ids = |ids: &[&str]| serde_json::to_string(ids).unwrap();
        sqlx::query(
            "INSERT INTO jobs (id, run_id, action, region, force_stop, instance_ids, key_ids, payload,
                               pair_count, state, attempts, throttles, next_attempt_at,
                               last_error_code, last_error_message, request_id, parent_job_id,
                               created_at, finished_at)
             VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, NULL, ?, ?)",
        )
        .bind(self.id)
        .bind(self.run_id)
        .bind(self.action)
        .bind(self.region)
        .bind(ids(self.instance_ids))
        .bind(ids(self.key_ids))
        .bind(&self.payload)
        .bind((self.instance_ids.len() * self.key_ids.len()) as i64)
        .bind(self.state)
        .bind(self.attempts)
        .bind(self.next_attempt_at)
        .bind(self.last_error.map(|e| e.0))
        .bind(self.last_error.map(|e| e.1))
        .bind(&self.request_id)
        .bind(self.created_at)
        .bind(self.finished_at)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// An `items` row of schema 0006.
struct OldItem {
    id: i64,
    run_id: i64,
    position: &'static str,
    bind: bool,
    region: &'static str,
    instance_id: &'static str,
    key_id: &'static str,
    new_key_id: Option<&'static str>,
    status: &'static str,
    held: bool,
    job_id: Option<i64>,
    request_id: Option<String>,
    /// (verdict, when, the DescribeInstances RequestId).
    verified: Option<(&'static str, i64, String)>,
}

impl OldItem {
    /// A pending unbind pair of the input's line `position`.
    fn unbind(
        id: i64,
        run_id: i64,
        position: &'static str,
        region: &'static str,
        instance_id: &'static str,
        key_id: &'static str,
    ) -> OldItem {
        OldItem {
            id,
            run_id,
            position,
            bind: false,
            region,
            instance_id,
            key_id,
            new_key_id: None,
            status: "pending",
            held: false,
            job_id: None,
            request_id: None,
            verified: None,
        }
    }

    /// A rotation's bind pair (instance, new key), placed at the row that asked for it.
    fn bind(
        id: i64,
        position: &'static str,
        instance_id: &'static str,
        key_id: &'static str,
        job_id: i64,
    ) -> OldItem {
        OldItem {
            bind: true,
            job_id: Some(job_id),
            ..OldItem::unbind(id, 2, position, GZ, instance_id, key_id)
        }
    }

    fn rotating_to(mut self, new_key_id: &'static str) -> OldItem {
        self.new_key_id = Some(new_key_id);
        self
    }

    fn held(mut self) -> OldItem {
        self.held = true;
        self
    }

    fn in_job(mut self, job_id: i64) -> OldItem {
        self.job_id = Some(job_id);
        self
    }

    fn succeeded(mut self, job_id: i64, request_id: &str) -> OldItem {
        self.status = "succeeded";
        self.job_id = Some(job_id);
        self.request_id = Some(request_id.to_string());
        self
    }

    fn verified(mut self, verdict: &'static str, at: i64, request_id: &str) -> OldItem {
        self.verified = Some((verdict, at, request_id.to_string()));
        self
    }

    /// Its entry in a verification or confirmation payload.
    fn to_verify(&self) -> OldVerifyItem {
        OldVerifyItem {
            item_id: self.id,
            instance_id: self.instance_id,
            key_id: self.key_id,
            request_id: self.request_id.clone(),
            bind: self.bind,
        }
    }

    async fn insert(&self, pool: &sqlx::SqlitePool) {
        sqlx::query(
            "INSERT INTO items (id, run_id, position, bind, region, instance_id, key_id, new_key_id,
                                status, held, duplicate_of, reason, job_id, request_id, error_code,
                                error_message, verified, verified_at, verify_request_id, op_failures)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, NULL, NULL, ?, ?, ?, 0)",
        )
        .bind(self.id)
        .bind(self.run_id)
        .bind(self.position)
        .bind(self.bind)
        .bind(self.region)
        .bind(self.instance_id)
        .bind(self.key_id)
        .bind(self.new_key_id)
        .bind(self.status)
        .bind(self.held)
        .bind(self.job_id)
        .bind(&self.request_id)
        .bind(self.verified.as_ref().map(|v| v.0))
        .bind(self.verified.as_ref().map(|v| v.1))
        .bind(self.verified.as_ref().map(|v| v.2.clone()))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// An `attempts` row of schema 0006: sent at `started_at`, answered `latency_ms` later.
#[allow(clippy::too_many_arguments)]
async fn old_attempt(
    pool: &sqlx::SqlitePool,
    job_id: i64,
    started_at: i64,
    latency_ms: i64,
    outcome: &str,
    request_id: Option<&str>,
    error: Option<(&str, &str)>,
    endpoint: Option<&str>,
) {
    sqlx::query(
        "INSERT INTO attempts (job_id, number, started_at, finished_at, sent_at, outcome, request_id,
                               error_code, error_message, http_status, latency_ms, endpoint)
         VALUES (?, (SELECT COUNT(*) + 1 FROM attempts WHERE job_id = ?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(job_id)
    .bind(job_id)
    .bind(started_at)
    .bind(started_at + latency_ms)
    .bind(started_at)
    .bind(outcome)
    .bind(request_id)
    .bind(error.map(|e| e.0))
    .bind(error.map(|e| e.1))
    .bind(request_id.map(|_| 200))
    .bind(latency_ms)
    .bind(endpoint)
    .execute(pool)
    .await
    .unwrap();
}

fn upgrade_fleet() -> Fleet {
    use keyfleet::sim::Instance;
    Fleet::new()
        .with_keys([OTHER, NEW1, NEW2, NEW3])
        .with(Instance::new(H, GZ).keys([OLD, OTHER]))
        .with(Instance::new(I, SH).keys([OLD]))
        .with(Instance::new(X1, GZ).keys([OLD]))
        .with(Instance::new(X2, GZ).keys([OLD, OTHER]))
        .with(Instance::new(Y1, GZ).keys([OLD]))
        .with(Instance::new(Y2, GZ).keys([OLD, OTHER]))
        .with(Instance::new(Z, GZ).keys([OLD]))
        .with(Instance::new(E, GZ).keys([OLD, OTHER]))
        .with(Instance::new(F, GZ).keys([OLD]))
}

fn owned(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// `PRAGMA integrity_check` says ok and `foreign_key_check` finds nothing.
async fn assert_database_whole(store: &keyfleet::store::Store) {
    let integrity: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(integrity, ["ok"]);
    let broken: Vec<(String, i64)> =
        sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check")
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
}

/// A database of the version before job kinds (schema up to 0006), holding what that
/// version (and the one before rotation) wrote for runs stopped mid-way, is opened by
/// this version: migration 0007 gives every job the kind its action and payload purpose
/// meant, the database stays whole, and `resume` finishes both runs as the previous
/// version would have: held unbinds go only after their instance's new key is
/// confirmed, `--keep-one-key` keeps the last key, nothing is left pending, and the
/// simulator's audit is clean.
///
/// Every request the database records as accepted was really sent to the simulator
/// first (with this version's client: the wire format is unchanged), so its journal
/// and fleet hold the earlier versions' work and the audit can prove the whole story.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_version_before_job_kinds_migrates_and_resumes() {
    let before = upgrade_fleet();
    let config = SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, before.clone()).await;
    let endpoint = r.sim.endpoint();
    let client = crate::support::sim_client(&r.sim);
    let unbind = |region: &'static str, instances: &[&str], keys: &[&str]| {
        let (instances, keys) = (owned(instances), owned(keys));
        let client = &client;
        async move {
            client
                .disassociate_instances_key_pairs(region, &instances, &keys, false)
                .await
                .expect("the earlier version's Disassociate")
                .request_id
        }
    };
    let bind = |instances: &[&str], key: &str| {
        let (instances, keys) = (owned(instances), owned(&[key]));
        let client = &client;
        async move {
            client
                .associate_instances_key_pairs(GZ, &instances, &keys, false)
                .await
                .expect("the earlier version's Associate")
                .request_id
        }
    };
    let look = |region: &'static str, instances: &[&str]| {
        let instances = owned(instances);
        let client = &client;
        async move {
            client
                .describe_instances(region, &instances)
                .await
                .expect("the earlier version's DescribeInstances")
                .1
        }
    };

    // Run 1, by the version before rotation: both unbinds accepted, then `keyfleet
    // verify` read the Guangzhou batch and was interrupted before the Shanghai one.
    let req_h = unbind(GZ, &[H], &[OLD]).await;
    let req_i = unbind(SH, &[I], &[OLD]).await;
    let req_v1 = look(GZ, &[H]).await;
    // Run 2, by the version before job kinds (`run --keep-one-key` of a rotation):
    // X's Associate accepted, confirmed bound, X1's unbind accepted; Y's Associate
    // accepted; then Ctrl-C. `keyfleet verify` queued a round and was interrupted too.
    let req_5 = bind(&[X1, X2], NEW1).await;
    let req_6 = bind(&[Y1, Y2], NEW2).await;
    let req_9 = look(GZ, &[X1, X2]).await;
    let req_11 = unbind(GZ, &[X1], &[OLD]).await;
    let journal_before = r.sim.journal().len();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (t1, t2) = (now - 7_200_000, now - 3_600_000);
    let pool = database_before(&r.db, 7).await;
    sqlx::query(
        "INSERT INTO runs (id, created_at, input_path, input_sha256, options, state, rows_read, pairs,
                           duplicates, rejected, instances, keys, regions, started_at, finished_at,
                           stop_reason)
         VALUES (1, ?, '/srv/keyfleet/leaked.csv', 'a1', ?, 'stopped', 2, 2, 0, 0, 2, 2, 2, ?, NULL,
                 'interrupted'),
                (2, ?, '/srv/keyfleet/rotate.csv', 'b2', ?, 'stopped', 8, 8, 0, 0, 7, 2, 1, ?, NULL,
                 'interrupted')",
    )
    .bind(t1)
    .bind(r#"{"default_region":null,"force_stop":false,"format":"csv","strict":false}"#)
    .bind(t1 + 1_000)
    .bind(t2)
    .bind(
        r#"{"default_region":null,"force_stop":false,"format":"csv","keep_one_key":true,"strict":false}"#,
    )
    .bind(t2 + 1_000)
    .execute(&pool)
    .await
    .unwrap();

    // Run 1's items, and its verification payloads without a purpose.
    let h = OldItem::unbind(1, 1, "line 2", GZ, H, OLD)
        .succeeded(1, &req_h)
        .verified("gone", t1 + 60_050, &req_v1);
    let i = OldItem::unbind(2, 1, "line 3", SH, I, OLD).succeeded(2, &req_i);
    let verify_h = OldPayload {
        purpose: None,
        recheck_until: t1 + 120_000,
        items: vec![h.to_verify()],
    };
    let verify_i = OldPayload {
        purpose: None,
        recheck_until: t1 + 120_000,
        items: vec![i.to_verify()],
    };

    // Run 2's items: the input's eight unbind pairs (rotating instances and, under
    // --keep-one-key, every other one held), then the five bind pairs.
    let x1_old = OldItem::unbind(3, 2, "line 2", GZ, X1, OLD)
        .rotating_to(NEW1)
        .succeeded(11, &req_11);
    let x2_old = OldItem::unbind(4, 2, "line 3", GZ, X2, OLD)
        .rotating_to(NEW1)
        .in_job(12);
    let x2_other = OldItem::unbind(5, 2, "line 4", GZ, X2, OTHER)
        .rotating_to(NEW1)
        .in_job(12);
    let y1_old = OldItem::unbind(6, 2, "line 5", GZ, Y1, OLD)
        .rotating_to(NEW2)
        .held();
    let y2_old = OldItem::unbind(7, 2, "line 6", GZ, Y2, OLD)
        .rotating_to(NEW2)
        .held();
    let z_old = OldItem::unbind(8, 2, "line 7", GZ, Z, OLD)
        .rotating_to(NEW3)
        .held();
    let e_old = OldItem::unbind(9, 2, "line 8", GZ, E, OLD).held();
    let f_old = OldItem::unbind(10, 2, "line 9", GZ, F, OLD).held();
    let x1_new = OldItem::bind(11, "line 2", X1, NEW1, 5)
        .succeeded(5, &req_5)
        .verified("bound", t2 + 2_150, &req_9);
    let x2_new = OldItem::bind(12, "line 3", X2, NEW1, 5)
        .succeeded(5, &req_5)
        .verified("bound", t2 + 2_150, &req_9);
    let y1_new = OldItem::bind(13, "line 5", Y1, NEW2, 6).succeeded(6, &req_6);
    let y2_new = OldItem::bind(14, "line 6", Y2, NEW2, 6).succeeded(6, &req_6);
    let z_new = OldItem::bind(15, "line 7", Z, NEW3, 7);
    let run2_items = [
        &x1_old, &x2_old, &x2_other, &y1_old, &y2_old, &z_old, &e_old, &f_old, &x1_new, &x2_new,
        &y1_new, &y2_new, &z_new,
    ];
    let confirm = |items: [&OldItem; 2], recheck_until: i64| OldPayload {
        purpose: Some("confirm"),
        recheck_until,
        items: items.iter().map(|i| i.to_verify()).collect(),
    };
    let precheck = OldPayload {
        purpose: Some("precheck"),
        recheck_until: 0,
        items: Vec::new(),
    };
    // `begin_verification`: every valid pair of the run, by instance and key.
    let mut verified: Vec<&OldItem> = run2_items.to_vec();
    verified.sort_by_key(|i| (i.instance_id, i.key_id));
    let verify_run2 = OldPayload {
        purpose: Some("verify"),
        recheck_until: t2 + 120_000,
        items: verified.iter().map(|i| i.to_verify()).collect(),
    };

    const UNBIND: &str = "DisassociateInstancesKeyPairs";
    const BIND: &str = "AssociateInstancesKeyPairs";
    const DESCRIBE: &str = "DescribeInstances";
    let mut look_e_f = OldJob::queued(8, 2, DESCRIBE, GZ, &[E, F], &[], t2)
        .payload(&precheck)
        .due(t2 + 6_050);
    look_e_f.attempts = 1;
    look_e_f.last_error = Some(("InternalError", "An internal error has occurred."));
    let jobs = [
        OldJob::queued(1, 1, UNBIND, GZ, &[H], &[OLD], t1).succeeded(&req_h, t1 + 1_150),
        OldJob::queued(2, 1, UNBIND, SH, &[I], &[OLD], t1).succeeded(&req_i, t1 + 1_170),
        OldJob::queued(3, 1, DESCRIBE, GZ, &[H], &[OLD], t1 + 60_000)
            .payload(&verify_h)
            .due(t1 + 60_000)
            .succeeded(&req_v1, t1 + 60_050),
        OldJob::queued(4, 1, DESCRIBE, SH, &[I], &[OLD], t1 + 60_000)
            .payload(&verify_i)
            .due(t1 + 60_000),
        // The plan: bind jobs, then the look.
        OldJob::queued(5, 2, BIND, GZ, &[X1, X2], &[NEW1], t2).succeeded(&req_5, t2 + 1_100),
        OldJob::queued(6, 2, BIND, GZ, &[Y1, Y2], &[NEW2], t2).succeeded(&req_6, t2 + 3_000),
        OldJob::queued(7, 2, BIND, GZ, &[Z], &[NEW3], t2),
        look_e_f,
        // What followed the outcomes.
        OldJob::queued(9, 2, DESCRIBE, GZ, &[X1, X2], &[NEW1], t2 + 1_100)
            .payload(&confirm([&x1_new, &x2_new], t2 + 62_100))
            .due(t2 + 2_100)
            .succeeded(&req_9, t2 + 2_150),
        OldJob::queued(10, 2, DESCRIBE, GZ, &[Y1, Y2], &[NEW2], t2 + 3_000)
            .payload(&confirm([&y1_new, &y2_new], t2 + 64_000))
            .due(t2 + 4_000),
        OldJob::queued(11, 2, UNBIND, GZ, &[X1], &[OLD], t2 + 2_150)
            .due(t2 + 2_150)
            .succeeded(&req_11, t2 + 2_260),
        OldJob::queued(12, 2, UNBIND, GZ, &[X2], &[OLD, OTHER], t2 + 2_150).due(t2 + 2_150),
        OldJob::queued(
            13,
            2,
            DESCRIBE,
            GZ,
            &[X1, X2, Y1, Y2, Z, E, F],
            &[OLD, NEW1, NEW2, NEW3, OTHER],
            t2 + 60_000,
        )
        .payload(&verify_run2)
        .due(t2 + 60_000),
    ];
    for job in &jobs {
        job.insert(&pool).await;
    }
    for item in [&h, &i].into_iter().chain(run2_items) {
        item.insert(&pool).await;
    }
    // Run 1's attempts were recorded before 0006: no endpoint.
    for (job, at, req) in [
        (1, t1 + 1_100, &req_h),
        (2, t1 + 1_120, &req_i),
        (3, t1 + 60_010, &req_v1),
    ] {
        old_attempt(&pool, job, at, 50, "succeeded", Some(req), None, None).await;
    }
    for (job, at, latency, req) in [
        (5, t2 + 1_010, 90, &req_5),
        (6, t2 + 1_100, 1_900, &req_6),
        (9, t2 + 2_100, 50, &req_9),
        (11, t2 + 2_200, 60, &req_11),
    ] {
        old_attempt(
            &pool,
            job,
            at,
            latency,
            "succeeded",
            Some(req),
            None,
            Some(&endpoint),
        )
        .await;
    }
    old_attempt(
        &pool,
        8,
        t2 + 1_010,
        40,
        "error",
        Some("req-internal-error"),
        Some(("InternalError", "An internal error has occurred.")),
        Some(&endpoint),
    )
    .await;
    pool.close().await;

    // This version opens it: 0007 names every job's kind.
    let store = r.store().await;
    let kinds: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, action, kind FROM jobs ORDER BY id")
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    let expected = [
        (1, "unbind"),
        (2, "unbind"),
        (3, "verify"),
        (4, "verify"),
        (5, "bind"),
        (6, "bind"),
        (7, "bind"),
        (8, "look"),
        (9, "confirm"),
        (10, "confirm"),
        (11, "unbind"),
        (12, "unbind"),
        (13, "verify"),
    ];
    assert_eq!(
        kinds
            .iter()
            .map(|(id, _, kind)| (*id, kind.as_str()))
            .collect::<Vec<_>>(),
        expected,
        "{kinds:?}"
    );
    for (id, action, kind) in &kinds {
        let kind: keyfleet::states::JobKind = kind.parse().unwrap();
        assert_eq!(kind.action().name(), action.as_str(), "job {id}");
    }
    assert_database_whole(&store).await;
    store.close().await;

    // Both runs resume to the end.
    let (code, _, stderr) = r.run(&["resume", "1", "--progress", "none"], LIMIT).await;
    assert_eq!(code, 0, "resume 1: {stderr}");
    let (code, _, stderr) = r.run(&["resume", "2", "--progress", "none"], LIMIT).await;
    // F keeps its last key (skipped): the run ends with exit 1, as a fresh one would.
    assert_eq!(code, 1, "resume 2: {stderr}");

    let keys: std::collections::BTreeMap<String, Vec<String>> = r
        .sim
        .fleet()
        .instances()
        .iter()
        .map(|i| {
            let mut keys = i.key_ids.clone();
            keys.sort();
            (i.instance_id.clone(), keys)
        })
        .collect();
    let expect = |instance: &str, keys_now: &[&str]| {
        let mut keys_now = owned(keys_now);
        keys_now.sort();
        assert_eq!(keys[instance], keys_now, "{instance}: {stderr}");
    };
    expect(H, &[OTHER]);
    expect(I, &[]);
    expect(X1, &[NEW1]);
    expect(X2, &[NEW1]);
    expect(Y1, &[NEW2]);
    expect(Y2, &[NEW2, OTHER]);
    expect(Z, &[NEW3]);
    expect(E, &[OTHER]);
    expect(F, &[OLD]);

    let store = r.store().await;
    assert_database_whole(&store).await;
    // (id, status, held, error_code, verified) of every item of both runs.
    type ItemEnd = (i64, String, i64, Option<String>, Option<String>);
    let items: Vec<ItemEnd> =
        sqlx::query_as("SELECT id, status, held, error_code, verified FROM items ORDER BY id")
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    for (id, status, held, code, verified) in &items {
        assert_eq!(*held, 0, "item {id} is still held: {items:?}");
        let skipped = *id == f_old.id;
        assert_eq!(
            status,
            if skipped { "skipped" } else { "succeeded" },
            "item {id}: {items:?}"
        );
        if skipped {
            assert_eq!(code.as_deref(), Some("KeepOneKey.LastKey"), "{items:?}");
            assert_eq!(verified.as_deref(), Some("still_bound"), "{items:?}");
        } else {
            let bind = *id >= x1_new.id;
            let word = if bind { "bound" } else { "gone" };
            assert_eq!(verified.as_deref(), Some(word), "item {id}: {items:?}");
        }
    }
    let open: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'in_flight')")
            .fetch_one(store.pool_for_tests())
            .await
            .unwrap();
    assert_eq!(open, 0);
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM runs ORDER BY id")
        .fetch_all(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(states, ["finished", "finished"]);

    // Held unbinds were released by their instance's confirmation or look, never
    // before it: each went into a new unbind job created once that read had finished.
    let released: Vec<(i64, i64, i64, String, String)> = sqlx::query_as(
        "SELECT i.id, j.created_at, r.finished_at, r.kind, j.kind FROM items i \
         JOIN jobs j ON j.id = i.job_id \
         JOIN jobs r ON r.id = ? WHERE i.id IN (?, ?, ?) \
         UNION ALL \
         SELECT i.id, j.created_at, r.finished_at, r.kind, j.kind FROM items i \
         JOIN jobs j ON j.id = i.job_id \
         JOIN jobs r ON r.id = ? WHERE i.id = ? ORDER BY 1",
    )
    .bind(10)
    .bind(y1_old.id)
    .bind(y2_old.id)
    .bind(z_old.id)
    .bind(8)
    .bind(e_old.id)
    .fetch_all(store.pool_for_tests())
    .await
    .unwrap();
    assert_eq!(released.len(), 4, "{released:?}");
    for (item, created, read_done, read_kind, kind) in &released {
        assert_eq!(kind, "unbind", "item {item}: {released:?}");
        assert!(
            created >= read_done,
            "item {item} was released before its {read_kind} finished: {released:?}"
        );
    }
    // Z's confirmation is a new job: its bind was sent, accepted and confirmed first.
    let z_confirmed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs c JOIN jobs u ON u.id = (SELECT job_id FROM items WHERE id = ?) \
         WHERE c.kind = 'confirm' AND c.state = 'succeeded' AND c.id > 13 \
         AND EXISTS (SELECT 1 FROM json_each(c.instance_ids) WHERE value = ?) \
         AND c.finished_at <= u.created_at",
    )
    .bind(z_old.id)
    .bind(Z)
    .fetch_one(store.pool_for_tests())
    .await
    .unwrap();
    assert_eq!(z_confirmed, 1);

    let mut outcomes = crate::support::audit_rows(store.pair_outcomes(1).await.unwrap());
    outcomes.extend(crate::support::audit_rows(
        store.pair_outcomes(2).await.unwrap(),
    ));
    let binds = crate::support::audit_rows(store.bind_outcomes(2).await.unwrap());
    store.close().await;
    let journal = r.sim.journal();
    assert!(journal.len() > journal_before, "resume sent nothing");
    let result = audit::audit_rotation(
        &before.bindings(),
        &r.sim.fleet().bindings(),
        &outcomes,
        &binds,
        &journal,
    );
    assert!(result.is_clean(), "audit: {:#?}", result.violations);
    // Nothing the earlier versions had accepted was sent again.
    let resent: Vec<&keyfleet::sim::JournalEntry> = journal[journal_before..]
        .iter()
        .filter(|e| {
            (e.action == UNBIND && e.instance_ids.iter().any(|i| i == H || i == I || i == X1))
                || (e.action == BIND && !e.instance_ids.iter().all(|i| i == Z))
        })
        .collect();
    assert!(resent.is_empty(), "{resent:#?}");
}

/// Migration 0012 (template changes) rebuilds `jobs` for its CHECK lists: every job of
/// every earlier kind, with all its columns, is copied as it was; the database stays
/// whole; the new kinds and actions can be stored, and the new tables are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0012_copies_every_job_and_admits_the_template_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyfleet.db");
    let pool = database_before(&db, 12).await;
    sqlx::query(
        "INSERT INTO runs (id, created_at, input_path, input_sha256, options, state)
         VALUES (1, 1, '/srv/in.csv', 'a1', '{}', 'stopped')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let kinds = [
        ("unbind", "DisassociateInstancesKeyPairs"),
        ("bind", "AssociateInstancesKeyPairs"),
        ("confirm", "DescribeInstances"),
        ("look", "DescribeInstances"),
        ("verify", "DescribeInstances"),
        ("survey", "DescribeInstances"),
        ("stop", "StopInstances"),
        ("settle", "DescribeInstances"),
        ("start", "StartInstances"),
    ];
    for (n, (kind, action)) in kinds.iter().enumerate() {
        sqlx::query(
            "INSERT INTO jobs (id, run_id, kind, action, region, force_stop, instance_ids, key_ids,
                               payload, pair_count, state, attempts, throttles, next_attempt_at,
                               last_error_code, last_error_message, request_id, parent_job_id,
                               created_at, finished_at)
             VALUES (?, 1, ?, ?, 'ap-guangzhou', ?, '[\"ins-00000001\"]', '[\"skey-00000001\"]',
                     ?, 1, ?, ?, 1, 5, 'Code', 'message', ?, NULL, 7, NULL)",
        )
        .bind(n as i64 + 1)
        .bind(kind)
        .bind(action)
        .bind((n % 2) as i64)
        .bind(format!("{{\"n\":{n}}}"))
        .bind(if n % 3 == 0 { "queued" } else { "succeeded" })
        .bind(n as i64)
        .bind(format!("req-{n}"))
        .execute(&pool)
        .await
        .unwrap();
    }
    let dump = |pool: sqlx::SqlitePool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT json_array(id, run_id, kind, action, region, force_stop, instance_ids, key_ids,
                               payload, pair_count, state, attempts, throttles, next_attempt_at,
                               last_error_code, last_error_message, request_id, parent_job_id,
                               created_at, finished_at) FROM jobs ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let before = dump(pool.clone()).await;
    pool.close().await;

    let store = keyfleet::store::Store::open(&db).await.unwrap();
    assert_eq!(dump(store.pool_for_tests().clone()).await, before);
    assert_database_whole(&store).await;
    sqlx::query(
        "INSERT INTO jobs (run_id, kind, action, region, instance_ids, key_ids, pair_count, created_at)
         VALUES (1, 'template_look', 'DescribeLaunchTemplateVersions', 'ap-guangzhou', '[]', '[]', 0, 8)",
    )
    .execute(store.pool_for_tests())
    .await
    .unwrap();
    assert!(store.template_changes(1).await.unwrap().is_empty());
    assert!(
        store
            .retirements_for(1, &["skey-00000001".to_string()], 0)
            .await
            .unwrap()
            .is_empty()
    );
}
