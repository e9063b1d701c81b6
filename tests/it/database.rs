//! Two processes on one run, and databases that are locked, read-only or corrupted:
//! one `resume` works while a second refuses and names the holder; a database that
//! cannot be used gives exit 2 and a message naming it, never a panic or a hang.
//!
//! And the database is the user's own (README, "Security"): planted, shared,
//! symlinked or foreign-owned databases and directories are refused like ssh's
//! StrictModes refuses a key file; `--db` is a file name, never a URL.

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
    let outcomes = crate::support::audit_rows(store.pair_outcomes(1).await.expect("outcomes"));
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
    assert_refused(&out, &inside_a_file, &["plain-file is not a directory"]);
    // A directory where the database should be.
    let out = keyfleet(dir.path(), &["runs"]).run();
    assert_refused(&out, dir.path(), &["is a directory, not a database file"]);
    // A directory that does not exist.
    let nowhere = dir.path().join("missing").join("keyfleet.db");
    let out = keyfleet(&nowhere, &["runs"]).run();
    assert_refused(&out, &nowhere, &["No such file or directory"]);
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

/// The commands tried on a database that must be refused: each opens it first.
fn commands_on(input: &Path) -> Vec<Vec<String>> {
    let input = input.to_str().expect("utf-8").to_string();
    [
        vec!["runs"],
        vec!["status"],
        vec!["report"],
        // `resume` and `run` would send requests: never risked here, should a check fail.
        vec!["plan", input.as_str()],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(String::from).collect())
    .collect()
}

fn run_refused(db: &Path, input: &Path, pieces: &[&str]) {
    for args in commands_on(input) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = keyfleet(db, &args).run();
        assert_refused(&out, db, pieces);
    }
}

/// keyfleet never makes a file writable: a 0400 database is refused with the fix,
/// root included (the check reads the mode, it does not try a write), and stays 0400.
#[cfg(unix)]
#[test]
fn a_read_only_database_is_a_clear_error() {
    let (db, input) = planned_db();
    chmod(&db.path, 0o400);
    run_refused(
        &db.path,
        &input,
        &[
            "read-only (mode 0400)",
            "never makes a file writable",
            "chmod u+w",
        ],
    );
    assert_eq!(mode_of(&db.path), 0o400);
}

/// The audit's attack: a database planted (or left) writable by others in a shared
/// directory. Every command refuses it, says why and how to fix it, and changes nothing.
#[cfg(unix)]
#[test]
fn a_planted_group_or_world_writable_database_is_refused() {
    for mode in [0o660, 0o606, 0o666] {
        let (db, input) = planned_db();
        chmod(&db.path, mode);
        let before = std::fs::read(&db.path).expect("db");
        run_refused(
            &db.path,
            &input,
            &[
                &format!("writable by group or others (mode {mode:04o})"),
                "chmod 600",
            ],
        );
        assert_eq!(mode_of(&db.path), mode, "the mode was changed");
        assert_eq!(
            std::fs::read(&db.path).expect("db"),
            before,
            "the database was written"
        );
    }
}

/// A database owned by another uid (tests run as root: chown to nobody, 65534) is
/// refused even though root could use it: its owner could have planted its plan.
#[cfg(unix)]
#[test]
fn a_database_owned_by_another_user_is_refused() {
    let (db, input) = planned_db();
    std::os::unix::fs::chown(&db.path, Some(65534), None).expect("chown (tests run as root)");
    run_refused(&db.path, &input, &["owned by uid 65534", "not by you"]);
    // A -wal left by another user is refused the same way.
    let (db, input) = planned_db();
    let wal = companion(&db.path, "-wal");
    std::fs::write(&wal, b"").expect("wal");
    chmod(&wal, 0o600);
    std::os::unix::fs::chown(&wal, Some(65534), None).expect("chown");
    run_refused(&db.path, &input, &["keyfleet.db-wal is owned by uid 65534"]);
    // So is a rollback journal another user planted: SQLite would roll it into the database.
    let (db, input) = planned_db();
    let journal = companion(&db.path, "-journal");
    std::fs::write(&journal, b"planted").expect("journal");
    chmod(&journal, 0o600);
    std::os::unix::fs::chown(&journal, Some(65534), None).expect("chown");
    run_refused(
        &db.path,
        &input,
        &["keyfleet.db-journal is owned by uid 65534"],
    );
}

fn companion(db: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", db.display()))
}

/// The audit planted `X.db-shm` as a symlink and keyfleet chmodded its target. Now no
/// link is followed, for the database or either companion: refused, target untouched.
#[cfg(unix)]
#[test]
fn a_symlinked_database_wal_or_shm_is_not_followed() {
    for suffix in ["-shm", "-wal", "-journal", ""] {
        let (db, input) = planned_db();
        let target = db.dir.path().join("victim.txt");
        std::fs::write(&target, b"someone else's file\n").expect("target");
        chmod(&target, 0o644);
        let link = companion(&db.path, suffix);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        run_refused(&db.path, &input, &["is a symbolic link", "follows none"]);
        assert_eq!(
            mode_of(&target),
            0o644,
            "{suffix}: the link's target was chmodded"
        );
        assert_eq!(
            std::fs::read(&target).expect("target"),
            b"someone else's file\n",
            "{suffix}: the link's target was written"
        );
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("link")
                .file_type()
                .is_symlink(),
            "{suffix}: the link was replaced"
        );
    }
}

/// ssh's StrictModes for the directories: group/other-writable without the sticky
/// bit, or owned by another user (not root), is refused; a sticky shared directory
/// (like /tmp) is fine when the database in it is ours.
#[cfg(unix)]
#[test]
fn a_directory_others_can_write_or_own_is_refused() {
    let (db, input) = planned_db();
    let dir = db.dir.path();
    chmod(dir, 0o777);
    run_refused(
        &db.path,
        &input,
        &["is writable by group or others (mode 0777)", "chmod go-w"],
    );
    chmod(dir, 0o770);
    run_refused(&db.path, &input, &["mode 0770"]);
    chmod(dir, 0o1777);
    let out = keyfleet(&db.path, &["runs"]).run();
    assert_eq!(
        out.code,
        Some(0),
        "a sticky directory: {}",
        out.stderr_text()
    );
    chmod(dir, 0o700);

    // A directory owned by someone else, inside ours: its owner can swap the database.
    let (db, input) = planned_db();
    let theirs = db.dir.path().join("theirs");
    std::fs::create_dir(&theirs).expect("dir");
    let moved = theirs.join("keyfleet.db");
    std::fs::rename(&db.path, &moved).expect("move db");
    std::os::unix::fs::chown(&theirs, Some(65534), None).expect("chown");
    run_refused(&moved, &input, &["is owned by uid 65534, neither you"]);
    // Any directory above counts too, as with ssh.
    let deeper = theirs.join("sub");
    std::fs::create_dir(&deeper).expect("sub");
    let out = keyfleet(&deeper.join("k.db"), &["runs"]).run();
    assert_refused(
        &out,
        &deeper.join("k.db"),
        &["theirs is owned by uid 65534"],
    );
    assert!(
        !deeper.join("k.db").exists(),
        "created in a directory not ours"
    );
}

/// `--db` is a file name, not a URL: `%41`, `?immutable=1` and `:memory:` are part of
/// the name, and each database is created 0600 and holds the run.
#[cfg(unix)]
#[test]
fn database_paths_are_file_names_not_urls() {
    let (db, input) = planned_db();
    for name in ["p%41.db", "x.db?immutable=1", ":memory:", "file:y.db"] {
        let path = db.dir.path().join(name);
        let out = keyfleet(&path, &["plan", input.to_str().unwrap()]).run();
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr_text());
        assert!(path.is_file(), "{name}: no such file was created");
        assert_eq!(mode_of(&path), 0o600, "{name}");
        let runs = keyfleet(&path, &["runs", "--json"]).run().json();
        assert_eq!(runs.as_array().map(Vec::len), Some(1), "{name}: {runs}");
    }
    assert!(!db.dir.path().join("pA.db").exists());
    // A relative `:memory:` is a file in the working directory, too.
    let out = Cmd::new(["--db", ":memory:", "plan", input.to_str().unwrap()])
        .env("HOME", db.dir.path())
        .cwd(db.dir.path())
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
}

/// Created 0600 whatever the umask. This checks the end state only (the old
/// chmod-after-open reached it too); that there is no wider moment comes from the
/// construction: `store/guard.rs` creates the file `O_EXCL`, mode 0600, before SQLite opens it.
#[cfg(unix)]
#[test]
fn a_new_database_is_owner_only_whatever_the_umask() {
    let (db, input) = planned_db();
    let fresh = db.dir.path().join("fresh.db");
    let out = crate::support::Cmd::new([
        "--db",
        fresh.to_str().unwrap(),
        "plan",
        input.to_str().unwrap(),
    ])
    .home(db.dir.path())
    .under_umask("000")
    .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    assert_eq!(mode_of(&fresh), 0o600);
}

/// Permissions are only tightened: a 0644 database (from an older keyfleet) becomes
/// 0600; the owner's bits are never added to.
#[cfg(unix)]
#[test]
fn a_database_readable_by_others_is_tightened_to_owner_only() {
    let (db, input) = planned_db();
    chmod(&db.path, 0o644);
    let out = keyfleet(&db.path, &["status"]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    assert_eq!(mode_of(&db.path), 0o600);
    chmod(&db.path, 0o640);
    let out = keyfleet(&db.path, &["plan", input.to_str().unwrap()]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    assert_eq!(mode_of(&db.path), 0o600);
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
