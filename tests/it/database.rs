//! Two processes on one run, and databases that are locked, read-only or corrupted:
//! one `resume` works while a second refuses and names the holder; a database that
//! cannot be used gives exit 2 and a message naming it, never a panic or a hang.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keyfleet::sim::{self, Fleet, Instance, SimConfig, SimHandle};
use keyfleet::store::Store;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use crate::support::{Cmd, Output, TempDb};

const GZ: &str = "ap-guangzhou";
const EXIT_USAGE: i32 = 2;
/// Requests in the slow run: one job per instance, each instance holding its own key.
const INSTANCES: u32 = 12;
/// The slow simulator's processing time per request.
const SLOW: Duration = Duration::from_millis(300);

/// Instance n holds skey n and skey 99; the input removes skey n only, so every
/// instance is its own job and skey 99 must stay everywhere.
fn fleet_and_input() -> (Fleet, String) {
    let mut fleet = Fleet::new();
    let mut csv = String::from("instance_id,key_id,region\n");
    for n in 1..=INSTANCES {
        let (instance, key) = (format!("ins-{n:08}"), format!("skey-{n:08}"));
        csv.push_str(&format!("{instance},{key},{GZ}\n"));
        fleet = fleet.with(Instance::new(instance, GZ).keys([key, "skey-00000099".to_string()]));
    }
    (fleet, csv)
}

async fn start_sim(latency: Duration, fleet: Fleet) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let config = SimConfig {
        rate: 0,
        latency: (latency, latency),
        ..SimConfig::default()
    };
    sim::start(listener, config, fleet)
        .await
        .expect("start sim")
}

/// `keyfleet --db DB ARGS...` with the simulator's test credentials and HOME in `home`.
fn keyfleet(db: &Path, args: &[&str]) -> Cmd {
    let mut all = vec!["--db", db.to_str().expect("utf-8 path")];
    all.extend(args);
    let home = db.parent().unwrap_or(Path::new("/nonexistent"));
    Cmd::new(all)
        .env("HOME", home)
        .env("TENCENTCLOUD_SECRET_ID", sim::TEST_SECRET_ID)
        .env("TENCENTCLOUD_SECRET_KEY", sim::TEST_SECRET_KEY)
}

/// Runs a blocking closure off the runtime, so the in-process simulator keeps serving.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

async fn owner_pid(db: &Path) -> Option<i64> {
    let options = SqliteConnectOptions::new().filename(db).read_only(true);
    let mut conn = SqliteConnection::connect_with(&options).await.ok()?;
    let pid: Option<i64> = sqlx::query_scalar("SELECT owner_pid FROM runs WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let _ = conn.close().await;
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resumes_one_works_one_refuses_naming_the_holder() {
    let (fleet, csv) = fleet_and_input();
    let before = fleet.bindings();
    let simulator = start_sim(SLOW, fleet).await;
    let db = TempDb::new();
    let input = db.dir.path().join("unbind.csv");
    std::fs::write(&input, csv).expect("input");
    let planned = keyfleet(&db.path, &["plan", input.to_str().unwrap()]).run();
    assert_eq!(planned.code, Some(0), "{}", planned.stderr_text());

    let endpoint = simulator.endpoint();
    let exec = ["--progress", "none", "--concurrency", "1"];
    let first = {
        let mut args = vec!["--endpoint", endpoint.as_str(), "resume"];
        args.extend(exec);
        keyfleet(&db.path, &args)
            .timeout(Duration::from_secs(30))
            .spawn()
    };
    let first_pid = first.pid() as i64;
    // The first holds the run once its pid is in the lease.
    let deadline = Instant::now() + Duration::from_secs(10);
    while owner_pid(&db.path).await != Some(first_pid) {
        assert!(
            Instant::now() < deadline,
            "the first resume never took the run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let second = {
        let mut args = vec!["--endpoint", endpoint.as_str(), "resume", "1"];
        args.extend(exec);
        keyfleet(&db.path, &args).timeout(Duration::from_secs(10))
    };
    let second: Output = blocking(move || second.run()).await;
    let stderr = second.stderr_text();
    assert_eq!(second.code, Some(EXIT_USAGE), "{stderr}");
    assert!(
        second.elapsed < Duration::from_secs(5),
        "took {:?} to refuse",
        second.elapsed
    );
    assert!(
        stderr.contains("process") && stderr.contains(&first_pid.to_string()),
        "the refusal does not name the holder {first_pid}: {stderr}"
    );
    let first: Output = blocking(move || first.wait()).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr_text());

    // The run ended correct: finished, every pair succeeded, exactly the asked keys gone.
    let status = keyfleet(&db.path, &["status", "--json"]).run().json();
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(status["pairs"]["succeeded"], INSTANCES as i64, "{status}");
    let store = Store::open(&db.path).await.expect("store");
    let outcomes = store.pair_outcomes(1).await.expect("outcomes");
    store.close().await;
    let audit = sim::audit::audit(
        &before,
        &simulator.fleet().bindings(),
        &outcomes,
        &simulator.journal(),
    );
    assert!(audit.is_clean(), "{:?}", audit.violations);
    assert_eq!(audit.succeeded, INSTANCES as usize);
    let left = simulator.fleet().bindings();
    assert_eq!(left.len(), INSTANCES as usize);
    assert!(
        left.iter().all(|(_, key)| key == "skey-00000099"),
        "{left:?}"
    );
    simulator.shutdown().await;
}

/// Asserts a clear refusal: exit 2 within the time limit, the database named, each piece present.
fn assert_refused(out: &Output, db: &Path, pieces: &[&str]) {
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(EXIT_USAGE), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(&db.display().to_string()),
        "the database is not named: {stderr}"
    );
    for piece in pieces {
        assert!(stderr.contains(piece), "no {piece:?} in: {stderr}");
    }
    // One cause, said once.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// A database holding one planned run.
fn planned_db() -> (TempDb, PathBuf) {
    let db = TempDb::new();
    let (_, csv) = fleet_and_input();
    let input = db.dir.path().join("unbind.csv");
    std::fs::write(&input, csv).expect("input");
    let out = keyfleet(&db.path, &["plan", input.to_str().unwrap()]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    (db, input)
}

#[test]
fn a_corrupted_database_is_a_clear_error_for_every_command() {
    let (db, input) = planned_db();
    let mut bytes = std::fs::read(&db.path).expect("db");
    bytes[..32].copy_from_slice(b"GARBAGE!GARBAGE!GARBAGE!GARBAGE!");
    std::fs::write(&db.path, &bytes).expect("overwrite header");
    let input = input.to_str().unwrap();
    for args in [
        &["runs"][..],
        &["status"],
        &["report"],
        &["plan", input],
        &["run", input, "--progress", "none"],
        &["resume", "--progress", "none"],
        &["retry", "--progress", "none"],
    ] {
        let out = keyfleet(&db.path, args).run();
        assert_refused(&out, &db.path, &["file is not a database"]);
    }

    // Cut short: SQLite finds the damage when it reads the schema.
    let (db, input) = planned_db();
    let bytes = std::fs::read(&db.path).expect("db");
    std::fs::write(&db.path, &bytes[..bytes.len() / 3]).expect("truncate");
    for args in [&["runs"][..], &["plan", input.to_str().unwrap()]] {
        let out = keyfleet(&db.path, args).run();
        assert_refused(&out, &db.path, &["malformed"]);
    }
}

#[test]
fn a_database_path_that_cannot_be_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, b"x").expect("file");
    // A path through a plain file: no process, root included, can create it.
    let inside_a_file = not_a_dir.join("keyfleet.db");
    let out = keyfleet(&inside_a_file, &["runs"]).run();
    assert_refused(&out, &inside_a_file, &["unable to open database file"]);
    // A directory where the database should be.
    let out = keyfleet(dir.path(), &["runs"]).run();
    assert_refused(&out, dir.path(), &["unable to open database file"]);
}

/// True when this process runs as root, for whom file modes do not stop writes.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

#[cfg(unix)]
#[test]
fn a_read_only_database_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    if running_as_root() {
        eprintln!(
            "note: running as root, where mode 0400 does not stop writes; \
             the read-only check is skipped (see a_database_path_that_cannot_be_a_database_is_a_clear_error)"
        );
        return;
    }
    let (db, input) = planned_db();
    let chmod = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(&db.path, 0o400);
    chmod(db.dir.path(), 0o500);
    let other = std::env::temp_dir().join(format!("keyfleet-ro-{}.csv", std::process::id()));
    let csv = std::fs::read_to_string(&input)
        .expect("input")
        .replace("skey-00000001", "skey-0000000a");
    std::fs::write(&other, csv).expect("input copy");
    let out = keyfleet(&db.path, &["plan", other.to_str().unwrap()]).run();
    chmod(db.dir.path(), 0o700);
    let _ = std::fs::remove_file(&other);
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(EXIT_USAGE), "{stderr}");
    assert!(
        stderr.contains("readonly") || stderr.contains("unable to open"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_is_a_clear_error_after_the_busy_timeout() {
    let (db, input) = planned_db();
    // Another connection holds the write lock for longer than keyfleet waits (10 s).
    let options = SqliteConnectOptions::new().filename(&db.path);
    let mut holder = SqliteConnection::connect_with(&options)
        .await
        .expect("connect");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .expect("lock");
    // A different input, so planning must write.
    let other = db.dir.path().join("other.csv");
    let csv = std::fs::read_to_string(&input)
        .expect("input")
        .replace(GZ, "ap-shanghai");
    std::fs::write(&other, csv).expect("other input");
    let cmd = keyfleet(&db.path, &["plan", other.to_str().unwrap()]).timeout(Duration::from_secs(
        keyfleet::store::BUSY_TIMEOUT.as_secs() + 15,
    ));
    let out: Output = blocking(move || cmd.run()).await;
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(EXIT_USAGE), "{stderr}");
    assert!(stderr.contains("database is locked"), "{stderr}");
    assert!(
        out.elapsed >= keyfleet::store::BUSY_TIMEOUT - Duration::from_secs(1),
        "gave up before the busy timeout: {:?}",
        out.elapsed
    );
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("unlock");
    holder.close().await.expect("close");
    // Nothing half-written: still the one run, and with the lock gone the plan goes through.
    let runs = keyfleet(&db.path, &["runs", "--json"]).run().json();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    let out = keyfleet(&db.path, &["plan", other.to_str().unwrap()]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
}
