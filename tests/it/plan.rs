//! `keyfleet plan`, `runs`, `status` and `report`, run as a user would: the binary,
//! a temporary database, sample inputs.

use std::path::{Path, PathBuf};

use serde_json::Value;

use keyfleet::store::queue::{Applied, ErrorInfo, Finish, Outcome, Write};
use keyfleet::store::{Store, now_ms};

use crate::support::{Cmd, Output, TempDb};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

/// One database, many commands against it.
struct Keyfleet {
    db: TempDb,
}

/// What a command did, as text.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn from(output: Output) -> Ran {
        Ran {
            code: output.code.unwrap_or(-1),
            stdout: output.stdout_text(),
            stderr: output.stderr_text(),
        }
    }

    fn ok(self) -> Ran {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: stdout {:?} stderr {:?}", self.stdout, self.stderr))
    }
}

impl Keyfleet {
    fn new() -> Keyfleet {
        Keyfleet { db: TempDb::new() }
    }

    /// `keyfleet --db DB ARGS...` through the shared harness (nothing of the
    /// developer's own setup leaks in), with a private HOME beside the database.
    fn command(&self, args: &[&str]) -> Cmd {
        let db = self.db.path.to_str().expect("utf-8 path");
        Cmd::new(["--db", db].iter().chain(args)).env("HOME", self.db.dir.path())
    }

    fn run(&self, args: &[&str]) -> Ran {
        Ran::from(self.command(args).run())
    }

    fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Ran {
        Ran::from(self.command(args).stdin(input).run())
    }

    fn plan(&self, input: &Path, extra: &[&str]) -> Value {
        let input = input.to_str().expect("utf-8 path");
        let mut args = vec!["plan", input, "--json"];
        args.extend_from_slice(extra);
        self.run(&args).ok().json()
    }

    /// Writes `content` to a file named `name` beside the database.
    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.db.dir.path().join(name);
        std::fs::write(&path, content).expect("write input");
        path
    }

    fn runs(&self) -> Vec<Value> {
        match self.run(&["runs", "--json"]).ok().json() {
            Value::Array(runs) => runs,
            other => panic!("runs --json: {other}"),
        }
    }

    fn report_csv(&self, extra: &[&str]) -> Vec<Vec<String>> {
        let mut args = vec!["report"];
        args.extend_from_slice(extra);
        let ran = self.run(&args).ok();
        let mut reader = csv::Reader::from_reader(ran.stdout.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(
            header,
            [
                "position",
                "region",
                "instance_id",
                "key_id",
                "status",
                "request_id",
                "error_code",
                "error_message",
                "attempts",
                "job_id",
                "verified",
                "new_key_id",
                "associate_status",
                "associate_request_id",
                "associate_verified",
                "power_before",
                "stopped_at",
                "started_at",
                "downtime_s",
                "power_after",
                "account"
            ]
        );
        reader
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect()
    }

    async fn store(&self) -> keyfleet::store::Store {
        keyfleet::store::Store::open(&self.db.path).await.unwrap()
    }
}

/// One attempt of `job` as the executor records it: its start, then `outcome`.
async fn attempt(store: &Store, job_id: i64, outcome: Outcome) {
    let started = store
        .apply(&[Write::Start {
            job_id,
            started_at: now_ms(),
        }])
        .await
        .unwrap();
    let [Applied::Started { attempt_id, .. }] = started[..] else {
        panic!("job {job_id} did not start: {started:?}");
    };
    let request_id = match &outcome {
        Outcome::Succeeded { request_id } => request_id.clone(),
        _ => format!("reply-{attempt_id}"),
    };
    let finish = Finish {
        attempt_id,
        job_id,
        kind: keyfleet::store::JobKind::Unbind,
        follow_up: keyfleet::store::queue::FollowUp::default(),
        finished_at: now_ms(),
        sent_at: now_ms(),
        latency_ms: 1,
        http_status: Some(200),
        request_id: Some(request_id),
        endpoint: None,
        outcome,
    };
    store
        .apply(&[Write::Finish(Box::new(finish))])
        .await
        .unwrap();
}

fn count(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn csv_sample_plans_into_groups_by_key_set() {
    let k = Keyfleet::new();
    let plan = k.plan(&sample("small.csv"), &[]);
    assert_eq!(plan["existing"], false);
    assert_eq!(count(&plan, "rows"), 7);
    assert_eq!(count(&plan, "pairs"), 7);
    assert_eq!(count(&plan, "duplicates"), 0);
    assert_eq!(count(&plan, "rejected"), 0);
    assert_eq!(count(&plan, "instances"), 5);
    assert_eq!(count(&plan, "keys"), 3);
    assert_eq!(count(&plan, "regions"), 1);
    // {1,2} x {k1,k2}, {3} x {k1}, {4,5} x {k3}
    assert_eq!(count(&plan, "jobs"), 3);
    assert_eq!(count(&plan, "lower_bound"), 1);
    assert_eq!(plan["rejections"], serde_json::json!([]));
}

#[test]
fn json_sample_with_pair_and_set_objects() {
    let k = Keyfleet::new();
    let plan = k.plan(&sample("small.json"), &[]);
    assert_eq!(count(&plan, "rows"), 4);
    assert_eq!(count(&plan, "pairs"), 10);
    assert_eq!(count(&plan, "jobs"), 3);
    let report = k.report_csv(&[]);
    let positions: Vec<&str> = report.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        positions,
        [
            "index 0",
            "index 1",
            "index 2, pair 1",
            "index 2, pair 2",
            "index 2, pair 3",
            "index 2, pair 4",
            "index 2, pair 5",
            "index 2, pair 6",
            "index 3, pair 1",
            "index 3, pair 2"
        ]
    );
    // Instance-major order within a set.
    assert_eq!(report[3][2], "ins-00000006");
    assert_eq!(report[3][3], "skey-00000005");
    assert!(report.iter().all(|r| r[4] == "pending" && !r[9].is_empty()));
}

#[test]
fn jsonl_sample_and_stdin() {
    let k = Keyfleet::new();
    let plan = k.plan(&sample("small.jsonl"), &[]);
    assert_eq!(count(&plan, "rows"), 3);
    assert_eq!(count(&plan, "pairs"), 6);
    assert_eq!(count(&plan, "jobs"), 3);

    let stdin = Keyfleet::new();
    let bytes = std::fs::read(sample("small.jsonl")).unwrap();
    let ran = stdin
        .run_with_stdin(&["plan", "-", "--format", "jsonl", "--json"], &bytes)
        .ok();
    let from_stdin = ran.json();
    assert_eq!(count(&from_stdin, "pairs"), 6);
    assert_eq!(from_stdin["input_path"], "-");
    assert_eq!(from_stdin["input_sha256"], plan["input_sha256"]);
}

#[test]
fn bom_crlf_and_mixed_shapes() {
    let k = Keyfleet::new();
    let csv = k.file(
        "bom.csv",
        b"\xEF\xBB\xBFInstanceId,KeyId,Region\r\nins-00000001,skey-00000001,ap-guangzhou\r\n\r\nins-00000002,skey-00000001,ap-guangzhou\r\n",
    );
    let plan = k.plan(&csv, &[]);
    assert_eq!(count(&plan, "pairs"), 2);
    assert_eq!(count(&plan, "rejected"), 0);
    let positions: Vec<String> = k
        .report_csv(&[])
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(positions, ["line 2", "line 4"]);

    let k = Keyfleet::new();
    let json = k.file(
        "mixed.txt",
        b"\xEF\xBB\xBF[\r\n{\"instance_id\":\"ins-00000001\",\"key_id\":\"skey-00000001\"},\r\n{\"instance_ids\":[\"ins-00000001\",\"ins-00000002\"],\"key_ids\":[\"skey-00000001\"]}\r\n]\r\n",
    );
    let plan = k.plan(&json, &["--region", "ap-guangzhou"]);
    assert_eq!(count(&plan, "rows"), 2);
    assert_eq!(count(&plan, "pairs"), 2);
    assert_eq!(count(&plan, "duplicates"), 1);
}

#[test]
fn a_set_larger_than_one_request_is_split_100_by_100() {
    let k = Keyfleet::new();
    let instances: Vec<String> = (0..150).map(|i| format!("ins-{i:08x}")).collect();
    let keys: Vec<String> = (0..120).map(|i| format!("skey-{i:08x}")).collect();
    let body = serde_json::json!([{ "instance_ids": instances, "key_ids": keys, "region": "ap-shanghai" }]);
    let path = k.file("big.json", body.to_string().as_bytes());
    let plan = k.plan(&path, &["--force-stop", "--max-down", "10"]);
    assert_eq!(count(&plan, "pairs"), 18_000);
    assert_eq!(count(&plan, "jobs"), 4);
    assert_eq!(count(&plan, "lower_bound"), 2);
}

#[test]
fn every_kind_of_bad_row_is_kept_with_position_and_reason() {
    let k = Keyfleet::new();
    let plan = k.plan(&sample("bad-rows.csv"), &[]);
    assert_eq!(count(&plan, "rows"), 10);
    assert_eq!(count(&plan, "pairs"), 2);
    assert_eq!(count(&plan, "duplicates"), 1);
    assert_eq!(count(&plan, "rejected"), 7);
    let report = k.report_csv(&["--only", "rejected"]);
    let expect = [
        ("line 3", "must be \"ins-\" followed by 8 characters"),
        (
            "line 4",
            "key id \"key-00000001\" does not start with \"skey-\"",
        ),
        ("line 5", "does not start with \"ins-\""),
        ("line 6", "leading or trailing spaces"),
        ("line 7", "region \"Guangzhou\" is not a region name"),
        ("line 8", "no region"),
        ("line 9", "no key_id (column 2)"),
    ];
    assert_eq!(report.len(), expect.len());
    for (row, (position, reason)) in report.iter().zip(expect) {
        assert_eq!(row[0], position);
        assert_eq!(row[4], "rejected");
        assert!(
            row[7].contains(reason),
            "{position}: {:?} lacks {reason:?}",
            row[7]
        );
    }
    // The summary lists the first few, with the same positions.
    assert_eq!(plan["rejections"][0]["position"], "line 3");
    assert!(plan["rejections"].as_array().unwrap().len() <= 5);

    // With a default region the row without one is valid; the row's own region still wins.
    let k = Keyfleet::new();
    let plan = k.plan(&sample("bad-rows.csv"), &["--region", "ap-beijing"]);
    assert_eq!(count(&plan, "rejected"), 6);
    assert_eq!(count(&plan, "regions"), 2);
}

#[test]
fn json_rows_of_the_wrong_shape_are_rejected_not_fatal() {
    let k = Keyfleet::new();
    let path = k.file(
        "shapes.json",
        br#"[
  {"instance_id": "ins-00000001", "key_id": "skey-00000001", "region": "ap-guangzhou"},
  "ins-00000002",
  {"instance_id": 12, "key_id": "skey-00000001", "region": "ap-guangzhou"},
  {"instance_ids": ["ins-00000003", null], "key_ids": ["skey-00000001"], "region": "ap-guangzhou"},
  {"instance_ids": [], "key_ids": ["skey-00000001"], "region": "ap-guangzhou"},
  {"instance_id": "ins-00000004", "key_ids": ["skey-00000001"], "region": "ap-guangzhou"}
]"#,
    );
    let plan = k.plan(&path, &[]);
    assert_eq!(count(&plan, "rows"), 6);
    assert_eq!(count(&plan, "pairs"), 2);
    let rejected = k.report_csv(&["--only", "rejected"]);
    let got: Vec<(&str, &str)> = rejected
        .iter()
        .map(|r| (r[0].as_str(), r[7].as_str()))
        .collect();
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0].0, "index 1");
    assert!(got[0].1.contains("a string, not an object"));
    assert_eq!(got[1].0, "index 2");
    assert!(got[1].1.contains("instance_id is a number"));
    assert_eq!(got[2].0, "index 3, pair 2");
    assert!(got[2].1.contains("instance_ids[1] is null"));
    assert_eq!(got[3].0, "index 4");
    assert!(got[3].1.contains("empty list"));
    assert_eq!(got[4].0, "index 5");
    assert!(got[4].1.contains("mixes a pair"));
}

#[test]
fn unreadable_inputs_exit_2_name_file_line_column_and_write_nothing() {
    let cases: [(&str, &[u8], &[&str], &str); 9] = [
        ("latin1.csv", b"instance_id,key_id\nins-00000001,sk\xe9y\n", &[], "line 2, column 16 (byte 34): not valid UTF-8"),
        ("nocol.csv", b"instance,key\nins-00000001,skey-00000001\n", &[], "line 1, column 1: the header has no instance_id or key_id column"),
        ("semi.csv", b"instance_id;key_id\nins-00000001;skey-00000001\n", &[], "keyfleet reads comma-separated values"),
        ("headeronly.csv", b"instance_id,key_id\n", &[], "line 2, column 1: the header is followed by no rows"),
        ("empty.csv", b"", &[], "line 1, column 1: the input is empty"),
        ("broken.json", b"[\n  {\"instance_id\": \"ins-00000001\",\n   \"key_id\": }\n]", &[], "line 3, column 14: malformed JSON"),
        ("object.json", b"{\"instance_id\": \"ins-00000001\"}", &["--format", "json"], "expected a JSON array"),
        ("broken.jsonl", b"{\"instance_id\": \"ins-00000001\", \"key_id\": \"skey-00000001\"}\n{\"instance_id\": \n", &[], "line 2, column"),
        ("empty.json", b"[ ]", &[], "the array has no rows"),
    ];
    for (name, content, extra, message) in cases {
        let k = Keyfleet::new();
        let path = k.file(name, content);
        let mut args = vec!["plan", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let ran = k.run(&args);
        assert_eq!(ran.code, 2, "{name}: {}", ran.stderr);
        assert!(
            ran.stderr.contains(&format!("{}: ", path.display())),
            "{name}: {}",
            ran.stderr
        );
        assert!(
            ran.stderr.contains(message),
            "{name}: {:?} lacks {message:?}",
            ran.stderr
        );
        assert!(k.runs().is_empty(), "{name}: a run was written");
    }
}

#[test]
fn missing_file_and_bad_region_flag_are_usage_errors() {
    let k = Keyfleet::new();
    let ran = k.run(&["plan", "/nonexistent/rows.csv"]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("cannot open /nonexistent/rows.csv"),
        "{}",
        ran.stderr
    );
    let ran = k.run(&[
        "plan",
        sample("small.csv").to_str().unwrap(),
        "--region",
        "Guangzhou",
    ]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("not a region name"), "{}", ran.stderr);
    assert!(k.runs().is_empty());
}

#[test]
fn strict_refuses_any_rejection_and_writes_nothing() {
    let k = Keyfleet::new();
    let ran = k.run(&["plan", sample("bad-rows.csv").to_str().unwrap(), "--strict"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("--strict: 7 input pair(s) rejected, so nothing was written"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("line 3: instance id"), "{}", ran.stderr);
    assert!(k.runs().is_empty());
    let plan = k.plan(&sample("small.csv"), &["--strict"]);
    assert_eq!(count(&plan, "pairs"), 7);
}

#[test]
fn planning_the_same_input_twice_finds_the_same_run() {
    let k = Keyfleet::new();
    let first = k.plan(&sample("bad-rows.csv"), &[]);
    let second = k.plan(&sample("bad-rows.csv"), &["--format", "csv"]);
    assert_eq!(second["existing"], true);
    assert_eq!(second["run_id"], first["run_id"]);
    assert_eq!(second["pairs"], first["pairs"]);
    assert_eq!(second["rejections"], first["rejections"]);
    assert_eq!(k.runs().len(), 1);
    assert_eq!(k.report_csv(&[]).len(), 10, "no new items");

    // Different options are a different run.
    let forced = k.plan(
        &sample("bad-rows.csv"),
        &["--force-stop", "--max-down", "10"],
    );
    assert_eq!(forced["existing"], false);
    assert_ne!(forced["run_id"], first["run_id"]);
    let runs = k.runs();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["run_id"], forced["run_id"], "newest first");
}

#[tokio::test]
async fn a_changed_input_is_detected() {
    use keyfleet::plan::{InputCheck, PlanOptions, check_input, plan_input};
    let k = Keyfleet::new();
    let path = k.file("rows.csv", &std::fs::read(sample("small.csv")).unwrap());
    let store = k.store().await;
    let planned = plan_input(&store, &path, &PlanOptions::default())
        .await
        .unwrap();
    let run = planned.summary.run_id;
    assert_eq!(
        check_input(&store, run).await.unwrap(),
        InputCheck::Unchanged
    );
    std::fs::write(
        &path,
        b"instance_id,key_id,region\nins-00000009,skey-00000009,ap-guangzhou\n",
    )
    .unwrap();
    assert!(matches!(
        check_input(&store, run).await.unwrap(),
        InputCheck::Changed { current_sha256, planned_sha256, .. } if current_sha256 != planned_sha256
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        check_input(&store, run).await.unwrap(),
        InputCheck::Missing { .. }
    ));
    store.close().await;
}

#[tokio::test]
async fn the_report_accounts_for_every_row_with_outcomes_and_attempts() {
    let k = Keyfleet::new();
    let plan = k.plan(&sample("bad-rows.csv"), &[]);
    let run = count(&plan, "run_id");
    // Play the executor through its own writes: the first job is throttled once, then
    // split, and its child succeeds; the other job fails on its one attempt.
    let store = k.store().await;
    // Two jobs: ins-00000001 loses skey-00000001, ins-00000008 loses skey-00000002.
    let due = store.due_jobs(run, None, now_ms(), 10).await.unwrap();
    let (job, other) = (due[0].id, due[1].id);
    let error = |code: &str, message: &str| ErrorInfo {
        code: code.into(),
        message: message.into(),
    };
    let throttled = Outcome::Throttled {
        error: error("RequestLimitExceeded", "Too many requests."),
        next_attempt_at: 0,
    };
    attempt(&store, job, throttled).await;
    let split = Outcome::Split {
        error: error("InvalidInstanceId.NotFound", "No instance found."),
        children: vec![(vec!["ins-00000001".into()], vec!["skey-00000001".into()])],
    };
    attempt(&store, job, split).await;
    let child = store.due_jobs(run, None, now_ms(), 10).await.unwrap();
    let child = child.iter().map(|j| j.id).max().unwrap();
    assert!(child > other, "the split's child is a new job");
    let success = Outcome::Succeeded {
        request_id: "req-1".into(),
    };
    attempt(&store, child, success).await;
    let fail = Outcome::Fail {
        error: error("InvalidInstanceId.NotFound", "No instance found."),
    };
    attempt(&store, other, fail).await;
    store.close().await;

    let report = k.report_csv(&[]);
    assert_eq!(
        report.len(),
        10,
        "one row per input row, rejected and duplicate included"
    );
    let positions: Vec<String> = report.iter().map(|r| r[0].clone()).collect();
    let expected: Vec<String> = (2..=11).map(|l| format!("line {l}")).collect();
    assert_eq!(positions, expected, "input order");
    let first = &report[0];
    assert_eq!(
        (first[4].as_str(), first[5].as_str()),
        ("succeeded", "req-1")
    );
    assert_eq!(
        first[8], "3",
        "attempts of the leaf job and of the job it was split from"
    );
    assert_eq!(first[9], child.to_string());
    let duplicate = &report[8];
    assert_eq!(duplicate[4], "duplicate");
    assert_eq!(
        duplicate[5], "req-1",
        "a duplicate shows the outcome of the row it repeats"
    );
    assert_eq!(duplicate[9], child.to_string());
    let failed = &report[9];
    assert_eq!(
        (failed[4].as_str(), failed[6].as_str()),
        ("failed", "InvalidInstanceId.NotFound")
    );
    assert_eq!(failed[8], "1", "the other job's one attempt");
    assert_ne!(failed[9], first[9]);

    let status = k.run(&["status", "--json"]).ok().json();
    for key in [
        "run_id",
        "state",
        "pairs",
        "jobs",
        "failures_by_code",
        "requests",
        "throttled",
        "started_at",
        "finished_at",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}: {status}");
    }
    assert_eq!(status["pairs"]["succeeded"], 1);
    assert_eq!(status["pairs"]["failed"], 1);
    assert_eq!(status["pairs"]["rejected"], 7);
    assert_eq!(status["pairs"]["duplicate"], 1);
    assert_eq!(status["pairs"]["pending"], 0);
    assert_eq!(status["jobs"]["split"], 1);
    assert_eq!(status["jobs"]["succeeded"], 1);
    assert_eq!(status["jobs"]["failed"], 1);
    assert_eq!(status["jobs"]["queued"], 0);
    assert_eq!(status["failures_by_code"]["InvalidInstanceId.NotFound"], 1);
    assert_eq!(status["requests"], 4);
    assert_eq!(status["throttled"], 1);

    let json = k
        .run(&["report", "--format", "json", "--only", "duplicate"])
        .ok()
        .json();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["request_id"], "req-1");
    assert_eq!(json[0]["attempts"], 3);
}

#[test]
fn report_file_is_private_and_complete() {
    let k = Keyfleet::new();
    k.plan(&sample("small.json"), &[]);
    let out = k.db.dir.path().join("report.csv");
    let ran = k.run(&["report", "--output", out.to_str().unwrap()]).ok();
    assert!(
        ran.stdout.is_empty(),
        "the report went to the file, not stdout"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 11);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(k.db.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn status_and_report_without_runs_explain_themselves() {
    let k = Keyfleet::new();
    let ran = k.run(&["status"]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("no runs"), "{}", ran.stderr);
    let ran = k.run(&["report", "42"]);
    assert!(
        ran.stderr.contains("run 42 does not exist"),
        "{}",
        ran.stderr
    );
}

#[tokio::test]
async fn a_plan_written_without_enforcement_keeps_every_reference_and_status_valid() {
    // The planner's connection skips foreign-key and CHECK enforcement (store::plan):
    // what it writes must pass both checks afterwards.
    let k = Keyfleet::new();
    k.plan(&sample("bad-rows.csv"), &[]);
    k.plan(&sample("small.json"), &["--region", "ap-shanghai"]);
    k.plan(&sample("small.jsonl"), &["--region", "ap-shanghai"]);
    let store = k.store().await;
    let pool = store.pool_for_tests();
    let violations: Vec<(String, i64, String, i64)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(integrity, "ok");
    let (items, bad_status, duplicates): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*),
                SUM(status NOT IN ('pending', 'succeeded', 'failed', 'rejected', 'duplicate')),
                SUM(status = 'duplicate' AND duplicate_of IS NOT NULL)
         FROM items",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(items > 0);
    assert_eq!(bad_status, 0);
    assert!(duplicates > 0, "bad-rows.csv repeats a pair");
    let bad_states: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM runs WHERE state <> 'planned')
              + (SELECT COUNT(*) FROM jobs WHERE state <> 'queued')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(bad_states, 0);
    // The pool's own connections still enforce foreign keys.
    let orphan = sqlx::query(
        "INSERT INTO items (run_id, position, status) VALUES (999999, 'line 1', 'pending')",
    )
    .execute(pool)
    .await;
    assert!(orphan.is_err(), "foreign keys are on outside the planner");
    store.close().await;
}

#[tokio::test]
async fn the_report_pages_through_a_large_run_whose_ids_are_not_consecutive() {
    let k = Keyfleet::new();
    // More rows than one report page (5,000), so the keyset paging is exercised.
    let rows = 12_345;
    let mut csv = String::from("instance_id,key_id,region\n");
    for i in 0..rows {
        csv.push_str(&format!("ins-{i:08x},skey-{:08x},ap-guangzhou\n", i % 3));
    }
    let big = k.file("big.csv", csv.as_bytes());
    let first = count(&k.plan(&big, &[]), "run_id");
    let second = count(&k.plan(&sample("small.csv"), &[]), "run_id");
    // An item of the first run after the second run's items: the first run's ids
    // now have a gap holding another run's items.
    let store = k.store().await;
    let (job, last_of_second): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT MIN(id) FROM jobs WHERE run_id = ?1), (SELECT MAX(id) FROM items WHERE run_id = ?2)",
    )
    .bind(first)
    .bind(second)
    .fetch_one(store.pool_for_tests())
    .await
    .unwrap();
    let appended: i64 = sqlx::query_scalar(
        "INSERT INTO items (run_id, position, region, instance_id, key_id, status, job_id)
         VALUES (?, 'line 99999', 'ap-guangzhou', 'ins-ffffffff', 'skey-00000000', 'pending', ?)
         RETURNING id",
    )
    .bind(first)
    .bind(job)
    .fetch_one(store.pool_for_tests())
    .await
    .unwrap();
    assert!(appended > last_of_second);
    store.close().await;

    let report = k.report_csv(&[&first.to_string()]);
    assert_eq!(
        report.len(),
        rows + 1,
        "every row of the run, none of the other's"
    );
    let positions: Vec<&str> = report.iter().map(|r| r[0].as_str()).collect();
    let expected: Vec<String> = (2..rows + 2)
        .map(|line| format!("line {line}"))
        .chain(["line 99999".to_string()])
        .collect();
    assert_eq!(positions, expected, "input order across pages");
    assert_eq!(report[0][2], "ins-00000000");
    assert_eq!(report[rows - 1][2], format!("ins-{:08x}", rows - 1));
    let pending = k.report_csv(&[&first.to_string(), "--only", "pending"]);
    assert_eq!(pending.len(), rows + 1);
    let other = k.report_csv(&[&second.to_string()]);
    assert_eq!(other.len(), 7, "small.csv: its own rows only");
    assert!(other.iter().all(|r| r[0] != "line 99999"));
}

#[tokio::test]
async fn a_database_of_release_0_1_reports_and_takes_new_plans() {
    // A database as release 0.1 left it: migration 0001 only, a run written by its
    // planner (position as text, ids from 1).
    let k = Keyfleet::new();
    let migrations = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/0001_init.sql"),
        migrations.path().join("0001_init.sql"),
    )
    .unwrap();
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&k.db.path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(migrations.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        for sql in [
            "INSERT INTO runs (id, created_at, input_path, input_sha256, options, rows_read, pairs, duplicates, rejected, instances, keys, regions)
             VALUES (1, 1, '/old/rows.csv', 'aa', '{}', 3, 2, 0, 1, 2, 1, 1)",
            "INSERT INTO jobs (id, run_id, region, instance_ids, key_ids, pair_count, created_at)
             VALUES (1, 1, 'ap-guangzhou', '[\"ins-00000001\",\"ins-00000002\"]', '[\"skey-00000001\"]', 2, 1)",
            "INSERT INTO items (id, run_id, position, region, instance_id, key_id, status, reason, job_id) VALUES
             (1, 1, 'line 2', 'ap-guangzhou', 'ins-00000001', 'skey-00000001', 'pending', NULL, 1),
             (2, 1, 'line 3', NULL, 'ins-x', 'skey-00000001', 'rejected', 'instance id \"ins-x\" is not ins- and 8 characters', NULL),
             (3, 1, 'line 4', 'ap-guangzhou', 'ins-00000002', 'skey-00000001', 'pending', NULL, 1)",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }

    let report = k.report_csv(&["1"]);
    let lines: Vec<String> = report.iter().map(|r| r.join(",")).collect();
    assert_eq!(
        lines,
        [
            "line 2,ap-guangzhou,ins-00000001,skey-00000001,pending,,,,0,1,,,,,,,,,,,",
            "line 3,,ins-x,skey-00000001,rejected,,,instance id \"ins-x\" is not ins- and 8 characters,0,,,,,,,,,,,,",
            "line 4,ap-guangzhou,ins-00000002,skey-00000001,pending,,,,0,1,,,,,,,,,,,",
        ]
    );
    let status = k.run(&["status", "1", "--json"]).ok().json();
    assert_eq!(status["pairs"]["pending"], 2);

    // A new plan goes in beside the old run, its ids after the old ones.
    let plan = k.plan(&sample("small.csv"), &[]);
    assert_eq!(count(&plan, "run_id"), 2);
    let store = k.store().await;
    let first_new: i64 = sqlx::query_scalar("SELECT MIN(id) FROM items WHERE run_id = 2")
        .fetch_one(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(first_new, 4);
    store.close().await;
    assert_eq!(k.report_csv(&["1"]).len(), 3);
    assert_eq!(k.report_csv(&["2"]).len(), 7);
}

/// kill -9 while a large plan is being written, at several depths into the write (the
/// database files' growth past a threshold), then the same plan again: every kill leaves
/// no run or the whole one, never part of one, and the database stays intact.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_killed_midway_leaves_no_run_or_a_whole_one() {
    let k = Keyfleet::new();
    let rows = 60_000;
    let mut csv = String::from("instance_id,key_id,region\n");
    for i in 0..rows {
        csv.push_str(&format!("ins-{i:08x},skey-{:08x},ap-guangzhou\n", i % 7));
    }
    let big = k.file("big.csv", csv.as_bytes());
    let db = k.db.path.clone();
    let footprint = || -> u64 {
        ["", "-wal", "-journal"]
            .iter()
            .filter_map(|suffix| {
                let mut name = db.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).ok().map(|m| m.len())
            })
            .sum()
    };
    // A first `plan` creates the schema; a run of another input makes the killed plan
    // one of several, as in a database in use.
    k.plan(&sample("small.csv"), &[]);
    let before = footprint();
    let mut mid_write = 0;
    for grown in [64 << 10, 512 << 10, 2 << 20, 4 << 20] {
        let running = k
            .command(&["plan", big.to_str().unwrap(), "--json"])
            .timeout(std::time::Duration::from_secs(120))
            .spawn();
        let pid = i32::try_from(running.pid()).unwrap();
        let started = std::time::Instant::now();
        while footprint() < before + grown && started.elapsed() < std::time::Duration::from_secs(60)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: kill(2) on the child this test started and has not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let ended = running.wait();
        let store = k.store().await;
        let pool = store.pool_for_tests();
        let runs: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT runs.id, (SELECT COUNT(*) FROM items WHERE items.run_id = runs.id)
             FROM runs WHERE input_path LIKE '%big.csv'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(integrity, "ok", "after a kill {grown} bytes in");
        let small: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items WHERE run_id = 1")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(small, 7, "the earlier run is untouched");
        store.close().await;
        match runs.as_slice() {
            [] => {
                assert_eq!(
                    ended.code, None,
                    "no run, so the kill came before the commit"
                );
                mid_write += 1;
            }
            [(_, items)] => {
                assert_eq!(*items, rows as i64, "a run is whole ({grown} bytes in)");
                // The plan was complete: start again from no run.
                let store = k.store().await;
                let pool = store.pool_for_tests();
                for table in ["items", "jobs"] {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE run_id <> 1"
                    )))
                    .execute(pool)
                    .await
                    .unwrap();
                }
                sqlx::query("DELETE FROM runs WHERE id <> 1")
                    .execute(pool)
                    .await
                    .unwrap();
                store.close().await;
            }
            more => panic!("one input, one run: {more:?}"),
        }
    }
    assert!(
        mid_write >= 2,
        "only {mid_write} kills landed inside the write"
    );
    // And the same plan, left alone, writes the whole run.
    let done = k.plan(&big, &[]);
    assert_eq!(count(&done, "rows"), rows as i64);
    let store = k.store().await;
    let items: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items WHERE run_id <> 1")
        .fetch_one(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(items, rows as i64);
    store.close().await;
}

/// A plan that has the database to itself writes through a rollback journal (each
/// page once) and puts WAL back at commit. kill -9 at two moments of that path: as
/// soon as the journal exists (leaving WAL mode, or the run row: the switch) and once
/// the database file itself has grown (pages written before the commit completes).
/// Every kill leaves no run or the whole one, an intact database back in WAL mode
/// (a hot journal rolled back by the next open), the earlier run untouched, and no
/// lock held: the next command opens at once and plans the input whole.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_killed_while_it_has_the_database_to_itself_leaves_no_run_or_a_whole_one() {
    let k = Keyfleet::new();
    let rows = 60_000;
    let mut csv = String::from("instance_id,key_id,region\n");
    for i in 0..rows {
        csv.push_str(&format!("ins-{i:08x},skey-{:08x},ap-guangzhou\n", i % 5));
    }
    let big = k.file("big.csv", csv.as_bytes());
    let db = k.db.path.clone();
    let named = |suffix: &str| {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    };
    let size = |suffix: &str| std::fs::metadata(named(suffix)).map_or(0, |m| m.len());
    let file_format = || {
        let bytes = std::fs::read(&db).unwrap();
        [bytes[18], bytes[19]]
    };
    k.plan(&sample("small.csv"), &[]);
    let before = size("");
    type Moment<'a> = (&'a str, Box<dyn Fn() -> bool + 'a>);
    let moments: [Moment<'_>; 2] = [
        (
            "the journal exists",
            Box::new(|| named("-journal").exists()),
        ),
        (
            "the file has grown",
            Box::new(|| named("-journal").exists() && size("") > before + (256 << 10)),
        ),
    ];
    for (moment, reached) in &moments {
        let running = k
            .command(&["plan", big.to_str().unwrap(), "--json"])
            .timeout(std::time::Duration::from_secs(120))
            .spawn();
        let pid = i32::try_from(running.pid()).unwrap();
        let started = std::time::Instant::now();
        while !reached() && started.elapsed() < std::time::Duration::from_secs(60) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: kill(2) on the child this test started and has not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let ended = running.wait();
        let opened = std::time::Instant::now();
        let store = k.store().await;
        assert!(
            opened.elapsed() < std::time::Duration::from_secs(5),
            "the killed plan's lock went with it"
        );
        // A journal the kill left is rolled back by that open if it was hot; one
        // killed before its first sync (header not yet valid) is ignored and reused.
        assert_eq!(file_format(), [2, 2], "WAL mode again after {moment}");
        let pool = store.pool_for_tests();
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(integrity, "ok", "after a kill when {moment}");
        let small: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items WHERE run_id = 1")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(small, 7, "the earlier run is untouched");
        let big_items: Vec<i64> = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM items WHERE items.run_id = runs.id)
             FROM runs WHERE input_path LIKE '%big.csv'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        match big_items.as_slice() {
            [] => assert_eq!(ended.code, None, "killed before its commit ({moment})"),
            [items] => {
                assert_eq!(*items, rows as i64, "a run is whole ({moment})");
                for sql in [
                    "DELETE FROM items WHERE run_id <> 1",
                    "DELETE FROM jobs WHERE run_id <> 1",
                    "DELETE FROM runs WHERE id <> 1",
                ] {
                    sqlx::query(sql).execute(pool).await.unwrap();
                }
            }
            more => panic!("one input, one run: {more:?}"),
        }
        store.close().await;
    }
    let done = k.plan(&big, &[]);
    assert_eq!(count(&done, "rows"), rows as i64);
    assert_eq!(file_format(), [2, 2]);
}

/// While a plan has the database to itself, another command waits for it (on the
/// lock every open takes) instead of failing, then reads the committed run.
#[cfg(unix)]
#[test]
fn a_command_started_during_a_plan_alone_waits_for_it_and_succeeds() {
    let k = Keyfleet::new();
    let rows = 60_000;
    let mut csv = String::from("instance_id,key_id,region\n");
    for i in 0..rows {
        csv.push_str(&format!("ins-{i:08x},skey-00000001,ap-guangzhou\n"));
    }
    let big = k.file("big.csv", csv.as_bytes());
    k.plan(&sample("small.csv"), &[]);
    let mut journal = k.db.path.clone().into_os_string();
    journal.push("-journal");
    let running = k
        .command(&["plan", big.to_str().unwrap(), "--json"])
        .timeout(std::time::Duration::from_secs(120))
        .spawn();
    let started = std::time::Instant::now();
    let mut seen = false;
    while !seen && started.elapsed() < std::time::Duration::from_secs(60) {
        seen = Path::new(&journal).exists();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(seen, "the plan writes through a rollback journal");
    // Started while the plan holds the database: it can only open once the plan
    // has committed and let go, so it sees the new run.
    let runs = k.runs();
    let planned = running.wait();
    assert_eq!(planned.code, Some(0), "{}", planned.stderr_text());
    assert_eq!(runs.len(), 2, "{runs:?}");
}
