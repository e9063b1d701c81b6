//! The pair report, byte for byte: a run with every kind of row (pending, succeeded,
//! failed with hostile messages, rejected hostile input, duplicates of a success and of
//! a failure, a rotation's both halves, a live run's power columns, a split job's
//! attempts) is reported in every form, and each output is compared with the file in
//! `tests/data/report/` that the report wrote before its reading and writing were
//! rewritten for speed (issue 25). A changed byte fails here; a deliberate change of
//! the report regenerates the files with `KEYFLEET_BLESS_REPORTS=1`.

use std::path::{Path, PathBuf};

use crate::support::{Cmd, TempDb};

/// Run 1: pairs, duplicates of a success and of a failure, hostile rejected rows.
const INPUT: &str = "instance_id,key_id,region
ins-00000001,skey-00000001,ap-guangzhou
ins-00000002,skey-00000001,ap-guangzhou
ins-00000001,skey-00000001,ap-guangzhou
\"=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",skey-00000001,ap-guangzhou
ins-00000003,\u{1b}]0;title\u{7}skey-00000001,ap-guangzhou
ins-00000006,skey-00000003,ap-guangzhou
ins-00000002,skey-00000001,ap-guangzhou
ins-00000007,skey-00000003,ap-guangzhou
+ins-00000008,@skey-00000001,ap-g\u{202e}uangzhou
ins-00000009,skey-00000003,ap-guangzhou
ins-0000000a,skey-00000004,ap-shanghai
";

/// Run 2: a rotation, one new key and two.
const ROTATION: &str = "instance_id,key_id,region,new_key_id
ins-00000004,skey-00000002,ap-shanghai,skey-0000000a
ins-00000005,skey-00000002,ap-shanghai,skey-0000000a skey-0000000b
ins-00000006,skey-00000002,ap-shanghai,skey-0000000a
";

/// What the executor, verify and a live run would have written, set directly: every
/// column the report reads, with text that needs quoting, escaping and a formula guard.
const OUTCOMES: &str = "
UPDATE items SET status = 'succeeded', request_id = 'req-ok-1', verified = 'gone'
    WHERE run_id = 1 AND instance_id = 'ins-00000001' AND status = 'pending';
UPDATE items SET status = 'failed', error_code = 'InvalidInstanceId.NotFound',
    error_message = '=cmd|'' /C calc''!A0, \"quoted\"' || char(10) || 'second line' || char(27) || '[31m'
    WHERE run_id = 1 AND instance_id = 'ins-00000002' AND status = 'pending';
INSERT INTO jobs (run_id, kind, action, region, instance_ids, key_ids, pair_count, state,
                  parent_job_id, created_at)
    SELECT run_id, kind, action, region, '[\"ins-00000006\"]', key_ids, 1, 'succeeded', id, 1
    FROM jobs WHERE run_id = 1 AND instance_ids LIKE '%ins-00000006%' AND kind = 'unbind';
UPDATE jobs SET state = 'split'
    WHERE id = (SELECT parent_job_id FROM jobs WHERE parent_job_id IS NOT NULL);
INSERT INTO attempts (job_id, number, started_at, outcome, error_code)
    SELECT parent_job_id, 1, 1, 'error', 'RequestLimitExceeded' FROM jobs
    WHERE parent_job_id IS NOT NULL;
INSERT INTO attempts (job_id, number, started_at, outcome, request_id)
    SELECT id, 1, 2, 'succeeded', 'req-split-6' FROM jobs WHERE parent_job_id IS NOT NULL;
UPDATE items SET status = 'succeeded', request_id = 'req-split-6', verified = 'still_bound',
    job_id = (SELECT id FROM jobs WHERE parent_job_id IS NOT NULL)
    WHERE run_id = 1 AND instance_id = 'ins-00000006';
INSERT INTO power (run_id, region, instance_id, state, seq, power_before, power_after,
                   stopped_at, started_at, up_at)
    VALUES (1, 'ap-guangzhou', 'ins-00000006', 'up', 1, 'RUNNING', 'RUNNING',
            1796644800123, 1796644805000, 1796644812345),
           (1, 'ap-guangzhou', 'ins-00000007', 'left_stopped', 2, 'RUNNING', 'STOPPED',
            1796644800000, NULL, NULL),
           (1, 'ap-guangzhou', 'ins-00000009', 'kept', 3, 'STOPPED', NULL, NULL, NULL, NULL);
UPDATE items SET status = 'succeeded', request_id = 'req-rot-4', verified = 'gone'
    WHERE run_id = 2 AND instance_id = 'ins-00000004' AND bind = 0;
UPDATE items SET status = 'succeeded', request_id = 'req-bind-4', verified = 'bound'
    WHERE run_id = 2 AND instance_id = 'ins-00000004' AND bind = 1;
UPDATE items SET status = 'failed', error_code = 'UnsupportedOperation.InstanceOsWindows',
    error_message = '-1 windows, no keys'
    WHERE run_id = 2 AND instance_id = 'ins-00000005' AND bind = 1 AND key_id = 'skey-0000000b';
UPDATE items SET status = 'succeeded', request_id = 'req-bind-5a'
    WHERE run_id = 2 AND instance_id = 'ins-00000005' AND bind = 1 AND key_id = 'skey-0000000a';
UPDATE items SET status = 'skipped', error_message = 'new key skey-0000000b not bound'
    WHERE run_id = 2 AND instance_id = 'ins-00000005' AND bind = 0;
";

/// Every form of the report, with the file that holds its bytes.
const FORMS: [(&str, &[&str]); 9] = [
    ("report.csv", &["report", "1"]),
    ("report-raw.csv", &["report", "1", "--raw"]),
    ("report.json", &["report", "1", "--format", "json"]),
    ("report-failed.csv", &["report", "1", "--only", "failed"]),
    (
        "report-duplicate.json",
        &["report", "1", "--only", "duplicate", "--format", "json"],
    ),
    (
        "report-rejected.csv",
        &["report", "1", "--only", "rejected"],
    ),
    ("rotation.csv", &["report", "2"]),
    ("rotation.json", &["report", "--format", "json"]),
    (
        "rotation-pending.csv",
        &["report", "2", "--only", "pending"],
    ),
];

fn expected_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/report")
}

#[test]
fn the_report_of_a_varied_run_is_byte_for_byte_what_it_was() {
    let db = TempDb::new();
    let db_arg = db.path.to_str().unwrap();
    let input = db.dir.path().join("varied.csv");
    std::fs::write(&input, INPUT).unwrap();
    let rotation = db.dir.path().join("rotation.csv");
    std::fs::write(&rotation, ROTATION).unwrap();
    for file in [&input, &rotation] {
        let planned = Cmd::new(["--db", db_arg, "plan", file.to_str().unwrap()]).run();
        assert_eq!(planned.code, Some(0), "{}", planned.stderr_text());
    }
    let conn = rusqlite::Connection::open(&db.path).unwrap();
    conn.execute_batch(OUTCOMES).unwrap();
    drop(conn);

    let bless = std::env::var_os("KEYFLEET_BLESS_REPORTS").is_some();
    for (file, args) in FORMS {
        let mut full = vec!["--db", db_arg];
        full.extend_from_slice(args);
        let report = Cmd::new(full).run();
        assert_eq!(report.code, Some(0), "{file}: {}", report.stderr_text());
        let path = expected_dir().join(file);
        if bless {
            std::fs::create_dir_all(expected_dir()).unwrap();
            std::fs::write(&path, &report.stdout).unwrap();
            continue;
        }
        let expected = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            report.stdout == expected,
            "{file} differs from {}:\n{}\n--- expected ---\n{}",
            path.display(),
            report.stdout_text(),
            String::from_utf8_lossy(&expected)
        );
    }
}
