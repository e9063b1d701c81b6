//! Executor unit tests against an in-memory fake API. The end-to-end tests against
//! the HTTP simulator live in `tests/it/`.

use std::collections::{BTreeSet, HashMap};

use rand::Rng;

use super::*;
use crate::store::ItemStatus;
use crate::store::plan::NewItem;
use crate::store::queue::Write;

/// A fake CVM endpoint: all-or-nothing batches, Windows and unknown instances,
/// seeded transient faults, and a log of every success with the pairs it covered.
struct FakeApi {
    state: Mutex<FakeState>,
}

struct FakeState {
    bound: BTreeSet<(String, String)>,
    windows: BTreeSet<String>,
    unknown: BTreeSet<String>,
    fault_rate: f64,
    rng: StdRng,
    fatal_on_request: Option<u64>,
    panic_on_request: Option<u64>,
    requests: u64,
    successes: HashMap<String, Vec<(String, String)>>,
    calls: Vec<crate::cvm::Action>,
    throttle_all: bool,
}

impl FakeApi {
    fn new(bound: &[(String, String)]) -> FakeApi {
        FakeApi {
            state: Mutex::new(FakeState {
                bound: bound.iter().cloned().collect(),
                windows: BTreeSet::new(),
                unknown: BTreeSet::new(),
                fault_rate: 0.0,
                rng: StdRng::seed_from_u64(42),
                fatal_on_request: None,
                panic_on_request: None,
                requests: 0,
                successes: HashMap::new(),
                calls: Vec::new(),
                throttle_all: false,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

fn refused(code: &str, message: &str) -> Refused {
    Refused {
        code: code.into(),
        message: message.into(),
        request_id: Some(uuid::Uuid::new_v4().to_string()),
        http_status: Some(200),
        transport: false,
    }
}

/// The ids a fake call names, from its JSON body.
fn ids(call: &Call, field: &str) -> Vec<String> {
    call.body[field]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl Api for FakeApi {
    async fn call(&self, call: &Call) -> Result<Reply, Refused> {
        tokio::task::yield_now().await;
        let reply = self.answer(call);
        if matches!(&reply, Err(r) if r.code == "Test.Panic") {
            panic!("a bug in a request task");
        }
        reply
    }

    fn endpoint(&self, _region: &str) -> String {
        "fake://cvm".into()
    }

    fn secret_id(&self) -> String {
        "AKIDfake".into()
    }
}

impl FakeApi {
    fn answer(&self, call: &Call) -> Result<Reply, Refused> {
        let instance_ids = ids(call, "InstanceIds");
        let key_ids = ids(call, "KeyIds");
        self.with(|s| {
            s.calls.push(call.action);
            if s.throttle_all {
                return Err(refused("RequestLimitExceeded", "The number of requests exceeds the frequency limit."));
            }
            s.requests += 1;
            if s.panic_on_request == Some(s.requests) {
                s.panic_on_request = None;
                // Stands in for a bug in a request task; the lock is released first.
                return Err(refused("Test.Panic", ""));
            }
            if s.fatal_on_request == Some(s.requests) {
                s.fatal_on_request = None;
                return Err(refused("AuthFailure.SignatureFailure", "The provided credentials could not be validated."));
            }
            if s.rng.random_bool(s.fault_rate) {
                return Err(refused("MutexOperation.TaskRunning", "An identical job is running."));
            }
            if let Some(id) = instance_ids.iter().find(|i| s.unknown.contains(*i)) {
                let _ = id;
                return Err(refused("InvalidInstanceId.NotFound", "No instance found."));
            }
            if let Some(id) = instance_ids.iter().find(|i| s.windows.contains(*i)) {
                return Err(refused(
                    "UnsupportedOperation.InstanceOsWindows",
                    &format!("The instance {id} with the Xserver windows2012cndatacenterx86_64 operating system does not support this operation."),
                ));
            }
            let request_id = uuid::Uuid::new_v4().to_string();
            let mut covered = Vec::new();
            for i in &instance_ids {
                for k in &key_ids {
                    s.bound.remove(&(i.clone(), k.clone()));
                    covered.push((i.clone(), k.clone()));
                }
            }
            s.successes.insert(request_id.clone(), covered);
            Ok(Reply {
                response: serde_json::json!({ "RequestId": request_id }),
                request_id,
                http_status: 200,
            })
        })
    }
}

/// instance, key, status, request id, error code
type ItemRow = (String, String, String, Option<String>, Option<String>);

fn ins(n: usize) -> String {
    format!("ins-{n:08x}")
}
fn key(n: usize) -> String {
    format!("skey-{n:08x}")
}

/// A pending pair in ap-guangzhou, in `job` if given.
fn pending_item<'a>(
    position: &'a str,
    instance: &'a str,
    key: &'a str,
    job: Option<i64>,
) -> NewItem<'a> {
    NewItem {
        position,
        action: crate::cvm::Action::DisassociateInstancesKeyPairs,
        region: Some("ap-guangzhou"),
        account: None,
        instance_id: Some(instance),
        key_id: Some(key),
        status: ItemStatus::Pending,
        duplicate_of: None,
        reason: None,
        job_id: job,
        new_key_id: None,
        held: false,
    }
}

/// A fresh run of `pairs` pairs, open for its jobs and items (the planner's own writer).
fn plan_writer(store: &Store, pairs: u64) -> crate::store::plan::PlanWriter {
    use crate::store::plan::{Begin, NewRun};
    let sha = format!("{:x}", rand::random::<u128>());
    let run = NewRun {
        input_path: "t",
        input_sha256: &sha,
        options: "{}",
        rows_read: pairs,
        pairs,
        duplicates: 0,
        rejected: 0,
        instances: 0,
        keys: 0,
        regions: 1,
    };
    let Begin::New(writer) = store.begin_plan(&run).unwrap() else {
        panic!("a fresh input");
    };
    writer
}

/// Writes a run whose jobs are `groups` (instances x keys), one item per pair,
/// through the planner's own writer.
async fn seed(store: &Store, groups: &[(Vec<String>, Vec<String>)]) -> i64 {
    use crate::store::plan::NewJob;
    let pairs: usize = groups.iter().map(|(i, k)| i.len() * k.len()).sum();
    let mut writer = plan_writer(store, pairs as u64);
    for (n, (instances, keys)) in groups.iter().enumerate() {
        let job = writer
            .add_job(NewJob {
                kind: crate::states::JobKind::Unbind,
                region: "ap-guangzhou",
                account: None,
                force_stop: false,
                instance_ids: instances,
                key_ids: keys,
                payload: None,
            })
            .unwrap();
        let position = format!("group {n}");
        writer
            .add_items(|sink| {
                for i in instances {
                    for k in keys {
                        sink.add(pending_item(&position, i, k, Some(job)))?;
                    }
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
    }
    writer.commit().unwrap()
}

/// Executes with fresh counters and no stop request.
async fn run(store: &Store, run_id: i64, api: Arc<FakeApi>, config: &ExecConfig) -> Summary {
    execute(
        store,
        run_id,
        api,
        config,
        Arc::new(Counters::default()),
        StopSignal::default(),
    )
    .await
    .unwrap()
}

fn fast_config() -> ExecConfig {
    ExecConfig {
        rate: 0.0,
        concurrency: 8,
        retry_base: Duration::from_millis(5),
        retry_cap: Duration::from_millis(40),
        throttle_delay: Duration::from_millis(5),
        seed: Some(7),
        ..ExecConfig::default()
    }
}

async fn items(store: &Store, run_id: i64) -> Vec<ItemRow> {
    sqlx::query_as("SELECT instance_id, key_id, status, request_id, error_code FROM items WHERE run_id = ? ORDER BY id")
        .bind(run_id)
        .fetch_all(store.pool_for_tests())
        .await
        .unwrap()
}

async fn open_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).await.unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_ridden_out_and_every_success_is_proven() {
    let (_dir, store) = open_store().await;
    let instances: Vec<String> = (0..250).map(ins).collect();
    let keys: Vec<String> = (0..3).map(key).collect();
    let groups: Vec<_> = instances
        .chunks(10)
        .map(|c| (c.to_vec(), keys.clone()))
        .collect();
    let run_id = seed(&store, &groups).await;
    let pairs: Vec<_> = instances
        .iter()
        .flat_map(|i| keys.iter().map(move |k| (i.clone(), k.clone())))
        .collect();
    let api = Arc::new(FakeApi::new(&pairs));
    api.with(|s| s.fault_rate = 0.3);

    let summary = run(&store, run_id, api.clone(), &fast_config()).await;
    assert_eq!(summary.stopped, None);
    assert_eq!(summary.pairs.succeeded, 750);
    assert_eq!(summary.pairs.failed, 0);
    assert!(summary.retries > 0, "the faults were met");
    api.with(|s| {
        assert!(s.bound.is_empty(), "every pair unbound");
        for (instance, key, status, request_id, _) in futures_items_blocking(&store, run_id) {
            assert_eq!(status, "succeeded");
            let covered = &s.successes[request_id.as_deref().unwrap()];
            assert!(
                covered.contains(&(instance, key)),
                "the RequestId proves this pair"
            );
        }
    });
    let unfinished: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE finished_at IS NULL")
            .fetch_one(store.pool_for_tests())
            .await
            .unwrap();
    assert_eq!(unfinished, 0);
}

fn futures_items_blocking(store: &Store, run_id: i64) -> Vec<ItemRow> {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(items(store, run_id)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_windows_and_one_unknown_instance_do_not_block_the_other_98() {
    let (_dir, store) = open_store().await;
    let instances: Vec<String> = (0..100).map(ins).collect();
    let keys = vec![key(1)];
    let run_id = seed(&store, &[(instances.clone(), keys.clone())]).await;
    let pairs: Vec<_> = instances
        .iter()
        .map(|i| (i.clone(), keys[0].clone()))
        .collect();
    let api = Arc::new(FakeApi::new(&pairs));
    api.with(|s| {
        s.windows.insert(ins(13));
        s.unknown.insert(ins(71));
    });
    let summary = run(&store, run_id, api.clone(), &fast_config()).await;
    assert_eq!(summary.pairs.succeeded, 98);
    assert_eq!(summary.pairs.failed, 2);
    let rows = futures_items_blocking(&store, run_id);
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r.2 == "failed")
        .map(|r| (r.0.clone(), r.4.clone().unwrap()))
        .collect();
    assert_eq!(
        failed,
        vec![
            (
                ins(13),
                "UnsupportedOperation.InstanceOsWindows".to_string()
            ),
            (ins(71), "InvalidInstanceId.NotFound".to_string())
        ]
    );
    // Windows is named and split off at once; the unknown one is bisected.
    assert!(
        summary.requests <= 3 + 2 * 7,
        "{} requests",
        summary.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_stops_without_failing_anything_and_resume_completes() {
    let (_dir, store) = open_store().await;
    let instances: Vec<String> = (0..40).map(ins).collect();
    let keys = vec![key(1), key(2)];
    let groups: Vec<_> = instances
        .chunks(4)
        .map(|c| (c.to_vec(), keys.clone()))
        .collect();
    let run_id = seed(&store, &groups).await;
    let pairs: Vec<_> = instances
        .iter()
        .flat_map(|i| keys.iter().map(move |k| (i.clone(), k.clone())))
        .collect();
    let api = Arc::new(FakeApi::new(&pairs));
    api.with(|s| s.fatal_on_request = Some(3));
    let config = ExecConfig {
        concurrency: 1,
        ..fast_config()
    };
    let first = run(&store, run_id, api.clone(), &config).await;
    assert!(
        matches!(&first.stopped, Some(StopReason::Fatal { code, .. }) if code == "AuthFailure.SignatureFailure")
    );
    assert_eq!(first.pairs.failed, 0, "a fatal error fails no pair");
    assert!(first.pairs.pending > 0);
    let state: String = sqlx::query_scalar("SELECT state FROM runs WHERE id = ?")
        .bind(run_id)
        .fetch_one(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(state, "stopped");

    let second = run(&store, run_id, api.clone(), &config).await;
    assert_eq!(second.stopped, None);
    assert_eq!(second.pairs.succeeded, 80);
    api.with(|s| assert!(s.bound.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_attempt_is_recovered_and_resent() {
    let (_dir, store) = open_store().await;
    let run_id = seed(&store, &[(vec![ins(1), ins(2)], vec![key(1)])]).await;
    // A previous process started an attempt and died before recording its outcome.
    store
        .apply(&[Write::Start {
            job_id: 1,
            started_at: 1,
        }])
        .await
        .unwrap();
    // Its lease is fresh, but its pid is gone.
    let dead = Lease {
        token: "dead".into(),
        pid: 999_999_999,
        ..Lease::for_this_process()
    };
    store
        .acquire_run(run_id, &dead, crate::store::queue::LEASE_STALE_AFTER)
        .await
        .unwrap();
    let api = Arc::new(FakeApi::new(&[(ins(1), key(1)), (ins(2), key(1))]));
    let summary = run(&store, run_id, api, &fast_config()).await;
    assert_eq!(summary.pairs.succeeded, 2);
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM attempts ORDER BY id")
        .fetch_all(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(outcomes, ["lost", "succeeded"]);
}

#[tokio::test]
async fn a_live_holder_is_refused() {
    let (_dir, store) = open_store().await;
    let run_id = seed(&store, &[(vec![ins(1)], vec![key(1)])]).await;
    let holder = Lease::for_this_process();
    store
        .acquire_run(run_id, &holder, crate::store::queue::LEASE_STALE_AFTER)
        .await
        .unwrap();
    let api = Arc::new(FakeApi::new(&[]));
    let err = execute(
        &store,
        run_id,
        api,
        &fast_config(),
        Arc::new(Counters::default()),
        StopSignal::default(),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("process {}", holder.pid)),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_give_up_after_max_attempts_with_the_last_code() {
    let (_dir, store) = open_store().await;
    let run_id = seed(&store, &[(vec![ins(1)], vec![key(1)])]).await;
    let api = Arc::new(FakeApi::new(&[(ins(1), key(1))]));
    api.with(|s| s.fault_rate = 1.0);
    let config = ExecConfig {
        max_attempts: 3,
        ..fast_config()
    };
    let summary = run(&store, run_id, api, &config).await;
    assert_eq!(summary.pairs.failed, 1);
    assert_eq!(summary.requests, 3);
    assert_eq!(
        summary.failures_by_code.get("MutexOperation.TaskRunning"),
        Some(&1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_errors_stops_dispatching() {
    let (_dir, store) = open_store().await;
    let groups: Vec<_> = (0..20).map(|n| (vec![ins(n)], vec![key(1)])).collect();
    let run_id = seed(&store, &groups).await;
    let api = Arc::new(FakeApi::new(&[]));
    api.with(|s| s.windows.extend((0..20).map(ins)));
    let config = ExecConfig {
        concurrency: 1,
        max_errors: Some(MaxErrors::Pairs(3)),
        ..fast_config()
    };
    let summary = run(&store, run_id, api, &config).await;
    assert_eq!(summary.stopped, Some(StopReason::MaxErrors { failed: 3 }));
    assert_eq!(summary.pairs.failed, 3);
    assert_eq!(summary.pairs.pending, 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_request_leaves_the_rest_pending_and_resumable() {
    let (_dir, store) = open_store().await;
    let groups: Vec<_> = (0..30).map(|n| (vec![ins(n)], vec![key(1)])).collect();
    let run_id = seed(&store, &groups).await;
    let api = Arc::new(FakeApi::new(&[]));
    let stop = StopSignal::default();
    stop.stop();
    let summary = execute(
        &store,
        run_id,
        api.clone(),
        &fast_config(),
        Arc::new(Counters::default()),
        stop,
    )
    .await
    .unwrap();
    assert_eq!(summary.stopped, Some(StopReason::Interrupted));
    assert_eq!(summary.pairs.pending, 30);
    let summary = run(&store, run_id, api, &fast_config()).await;
    assert_eq!(summary.pairs.succeeded, 30);
}

#[test]
fn max_errors_parses_counts_and_percentages() {
    assert_eq!("50".parse::<MaxErrors>(), Ok(MaxErrors::Pairs(50)));
    assert_eq!("5%".parse::<MaxErrors>(), Ok(MaxErrors::Percent(5.0)));
    assert!("lots".parse::<MaxErrors>().is_err());
    assert!("150%".parse::<MaxErrors>().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_request_task_stops_the_run_and_resume_completes() {
    let (_dir, store) = open_store().await;
    let groups: Vec<_> = (0..10).map(|n| (vec![ins(n)], vec![key(1)])).collect();
    let run_id = seed(&store, &groups).await;
    let api = Arc::new(FakeApi::new(&[]));
    api.with(|s| s.panic_on_request = Some(4));
    let config = ExecConfig {
        concurrency: 1,
        ..fast_config()
    };
    let first = run(&store, run_id, api.clone(), &config).await;
    assert!(
        matches!(first.stopped, Some(StopReason::Internal(_))),
        "{:?}",
        first.stopped
    );
    assert_eq!(first.pairs.failed, 0);
    let second = run(&store, run_id, api, &config).await;
    assert_eq!(second.stopped, None);
    assert_eq!(second.pairs.succeeded, 10);
    let lost: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE outcome = 'lost'")
        .fetch_one(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(lost, 1, "the attempt the panic left open was resent");
}

/// A run whose unbind `pairs` and `binds` (a rotation's new keys) have items but no
/// jobs yet (the jobs come from a `JobWriter`): a key-pair job is sent only for
/// pairs its items hold (`KeyFleet.NotPlanned`), binds included.
async fn seed_rotation_items(
    store: &Store,
    pairs: &[(String, String)],
    binds: &[(String, String)],
) -> (i64, Vec<i64>, Vec<i64>) {
    let mut writer = plan_writer(store, pairs.len() as u64);
    let (mut ids, mut bind_ids) = (Vec::new(), Vec::new());
    writer
        .add_items(|sink| {
            for (n, (i, k)) in pairs.iter().enumerate() {
                let position = format!("line {}", n + 2);
                ids.push(sink.add(pending_item(&position, i, k, None))?);
            }
            for (i, k) in binds {
                bind_ids.push(sink.add(NewItem {
                    action: crate::cvm::Action::AssociateInstancesKeyPairs,
                    ..pending_item("line 2", i, k, None)
                })?);
            }
            Ok::<_, crate::store::StoreError>(())
        })
        .unwrap();
    (writer.commit().unwrap(), ids, bind_ids)
}

fn job_of(
    action: crate::cvm::Action,
    instances: &[String],
    keys: &[String],
    after: Vec<i64>,
    item_ids: Vec<i64>,
) -> crate::store::queue::NewQueuedJob {
    let kind = match action {
        crate::cvm::Action::AssociateInstancesKeyPairs => crate::states::JobKind::Bind,
        crate::cvm::Action::DisassociateInstancesKeyPairs => crate::states::JobKind::Unbind,
        other => panic!("no job kind sends {other}"),
    };
    crate::store::queue::NewQueuedJob {
        kind,
        region: "ap-guangzhou".into(),
        account: None,
        force_stop: false,
        instance_ids: instances.to_vec(),
        key_ids: keys.to_vec(),
        payload: None,
        after,
        item_ids,
    }
}

async fn job_states(store: &Store, run_id: i64) -> Vec<(i64, String, String)> {
    sqlx::query_as("SELECT id, action, state FROM jobs WHERE run_id = ? ORDER BY id")
        .bind(run_id)
        .fetch_all(store.pool_for_tests())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_sent_only_after_the_jobs_it_depends_on_succeed() {
    use crate::cvm::Action::{
        AssociateInstancesKeyPairs as Bind, DisassociateInstancesKeyPairs as Unbind,
    };
    let (_dir, store) = open_store().await;
    let old = (ins(1), key(1));
    let (run_id, items, bind_items) =
        seed_rotation_items(&store, std::slice::from_ref(&old), &[(ins(1), key(9))]).await;
    let mut writer = store.begin_jobs(run_id).await.unwrap();
    // Added in the "wrong" order on purpose: the unbind has the lower id.
    let bind = writer
        .add(&job_of(Bind, &[ins(1)], &[key(9)], vec![], bind_items))
        .await
        .unwrap();
    let unbind = writer
        .add(&job_of(Unbind, &[ins(1)], &[key(1)], vec![bind], items))
        .await
        .unwrap();
    writer.commit().await.unwrap();
    assert!(bind < unbind);
    let api = Arc::new(FakeApi::new(&[old]));
    let summary = run(&store, run_id, api.clone(), &fast_config()).await;
    assert_eq!(summary.stopped, None);
    assert_eq!(summary.pairs.succeeded, 1);
    // Then only the bind's confirmation (a read), as its pair is a planned bind item.
    let calls = api.with(|s| s.calls.clone());
    assert_eq!(calls[..2], [Bind, Unbind], "{calls:?}");
    assert!(
        calls[2..]
            .iter()
            .all(|a| *a == crate::cvm::Action::DescribeInstances),
        "{calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prerequisite_skips_its_dependents_and_their_pairs() {
    use crate::cvm::Action::{
        AssociateInstancesKeyPairs as Bind, DisassociateInstancesKeyPairs as Unbind,
    };
    let (_dir, store) = open_store().await;
    let pairs = [(ins(1), key(1)), (ins(2), key(1))];
    let (run_id, items, bind_items) =
        seed_rotation_items(&store, &pairs, &[(ins(1), key(9)), (ins(2), key(9))]).await;
    let mut writer = store.begin_jobs(run_id).await.unwrap();
    // The bind of a batch with a Windows instance splits; one child fails for good.
    let bind = writer
        .add(&job_of(
            Bind,
            &[ins(1), ins(2)],
            &[key(9)],
            vec![],
            bind_items,
        ))
        .await
        .unwrap();
    let unbind = writer
        .add(&job_of(
            Unbind,
            &[ins(1), ins(2)],
            &[key(1)],
            vec![bind],
            items,
        ))
        .await
        .unwrap();
    // And one more level: a job waiting for the unbind is skipped too.
    let after_unbind = writer
        .add(&job_of(Unbind, &[ins(3)], &[key(3)], vec![unbind], vec![]))
        .await
        .unwrap();
    writer.commit().await.unwrap();
    let api = Arc::new(FakeApi::new(&pairs));
    api.with(|s| {
        s.windows.insert(ins(2));
    });
    let summary = run(&store, run_id, api.clone(), &fast_config()).await;
    assert_eq!(
        summary.stopped, None,
        "the run ends; it does not wait forever"
    );
    assert_eq!(summary.pairs.skipped, 2);
    assert_eq!(summary.pairs.succeeded, 0);
    assert!(
        api.with(|s| s.calls.iter().all(|a| *a != Unbind)),
        "no unbind was sent"
    );
    let states = job_states(&store, run_id).await;
    let state = |id: i64| states.iter().find(|(j, _, _)| *j == id).unwrap().2.clone();
    assert_eq!(state(bind), "split");
    assert_eq!(state(unbind), "skipped");
    assert_eq!(state(after_unbind), "skipped");
    // The split moved the dependency onto the children.
    let deps: Vec<i64> =
        sqlx::query_scalar("SELECT depends_on FROM job_deps WHERE job_id = ? ORDER BY depends_on")
            .bind(unbind)
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    let children: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE parent_job_id = ? ORDER BY id")
            .bind(bind)
            .fetch_all(store.pool_for_tests())
            .await
            .unwrap();
    assert_eq!(deps, children);
    // The unbind pairs (bind 0) carry the failed prerequisite's code.
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT COALESCE(error_message, '') FROM items WHERE run_id = ? AND bind = 0 ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(store.pool_for_tests())
    .await
    .unwrap();
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("UnsupportedOperation.InstanceOsWindows")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_that_never_ends_stops_the_run_resumable_after_its_budget() {
    let (_dir, store) = open_store().await;
    let groups: Vec<_> = (0..3).map(|n| (vec![ins(n)], vec![key(1)])).collect();
    let run_id = seed(&store, &groups).await;
    let api = Arc::new(FakeApi::new(&[]));
    api.with(|s| s.throttle_all = true);
    let config = ExecConfig {
        throttle_budget: Duration::from_millis(200),
        ..fast_config()
    };
    let first = run(&store, run_id, api.clone(), &config).await;
    assert_eq!(
        first.stopped,
        Some(StopReason::ThrottledTooLong {
            budget: Duration::from_millis(200)
        })
    );
    assert_eq!(first.pairs.failed, 0, "a throttle never fails a pair");
    assert_eq!(first.pairs.pending, 3);
    assert!(first.throttled > 3, "it kept trying within the budget");
    api.with(|s| s.throttle_all = false);
    let second = run(&store, run_id, api, &config).await;
    assert_eq!(second.stopped, None);
    assert_eq!(second.pairs.succeeded, 3);
}
