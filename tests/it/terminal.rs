//! The operator's terminal and pipelines: flags only where they act, `status --watch`,
//! JSON log lines, `--quiet` and its verdict, SIGTERM/SIGHUP, completions, man pages,
//! and the exit-code table.

use std::time::Duration;

use keyfleet::sim::{Faults, Fleet, Instance, SimConfig, audit};
use serde_json::Value;

use crate::support::{Cmd, Rehearsal, ins, key};

const GZ: &str = "ap-guangzhou";
const LIMIT: Duration = Duration::from_secs(120);

/// `n` STOPPED Linux instances; instance i holds the shared key 0 and its own key.
fn fleet(n: usize) -> Fleet {
    (0..n).fold(Fleet::new(), |fleet, i| {
        fleet.with(Instance::new(ins(i), GZ).keys([key(0), key(1000 + i)]))
    })
}

/// Remove each instance's own key: one single-pair job per instance, key 0 untouched.
fn own_keys(n: usize) -> Vec<(String, String, String)> {
    (0..n)
        .map(|i| (ins(i), key(1000 + i), GZ.to_string()))
        .collect()
}

/// No rate limit, no settling; each request takes `latency`.
fn sim(latency: Duration) -> SimConfig {
    SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        latency: (latency, latency),
        ..SimConfig::default()
    }
}

async fn assert_audit(r: &Rehearsal, before: &Fleet) -> audit::Audit {
    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let outcomes = crate::support::audit_rows(store.pair_outcomes(run_id).await.unwrap());
    store.close().await;
    let result = audit::audit(
        &before.bindings(),
        &r.sim.fleet().bindings(),
        &outcomes,
        &r.sim.journal(),
    );
    assert!(result.is_clean(), "audit: {:#?}", result.violations);
    result
}

async fn wait_for_requests(r: &Rehearsal, n: usize) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while r.sim.journal().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never sent {n} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_flag_is_refused_where_it_would_do_nothing() {
    for args in [
        vec!["verify", "--no-verify"],
        vec!["verify", "--verify-wait", "5"],
        vec!["discover", "--key", "skey-aaaaaaaa", "--max-errors", "3"],
        vec!["discover", "--key", "skey-aaaaaaaa", "--concurrency", "3"],
        vec!["plan", "in.csv", "--rate", "5"],
    ] {
        let out = Cmd::new(&args).run();
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr_text());
        assert!(
            out.stderr_text().contains("unexpected argument"),
            "{args:?}: {}",
            out.stderr_text()
        );
    }
}

#[test]
fn every_time_flag_takes_one_duration_syntax() {
    // Refused by the value parser (exit 2, naming the flag), not by an unknown flag.
    for (args, flag) in [
        (vec!["verify", "--wait", "5x"], "--wait"),
        (vec!["resume", "--timeout", "fast"], "--timeout"),
        (vec!["status", "--watch", "--interval", "0"], "--interval"),
    ] {
        let out = Cmd::new(&args).run();
        assert_eq!(out.code, Some(2), "{args:?}");
        let stderr = out.stderr_text();
        assert!(
            stderr.contains("invalid value") && stderr.contains(flag),
            "{args:?}: {stderr}"
        );
    }
}

/// `status --watch` from another process while a run goes: JSON Lines whose last
/// object equals `status --json`, and plain lines ending with the summary, both
/// exiting 0 once the run is finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_run_to_its_end() {
    let fleet = fleet(40);
    let r = Rehearsal::start(sim(Duration::from_millis(40)), fleet.clone()).await;
    let input = r.input("in.csv", &own_keys(40));
    let input = input.to_str().unwrap();
    let (code, _, stderr) = r.run(&["plan", input], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");

    let watch = |json: bool| {
        let mut args = vec!["status", "--watch", "--interval", "100ms"];
        if json {
            args.push("--json");
        }
        r.command(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let json_watcher = watch(true);
    let text_watcher = watch(false);
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                input,
                "--no-verify",
                "--rate",
                "20",
                "--concurrency",
                "2",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let finished = |child: tokio::process::Child| async move {
        let out = tokio::time::timeout(LIMIT, child.wait_with_output())
            .await
            .expect("the watcher exits once the run is finished")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json = finished(json_watcher).await;
    let text = finished(text_watcher).await;

    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 3, "one object per interval: {json}");
    let (code, status, stderr) = r.run(&["status", "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    let status: Value = serde_json::from_str(&status).unwrap();
    let last = lines.last().unwrap();
    for field in [
        "state",
        "pairs",
        "jobs",
        "requests",
        "throttled",
        "verification",
    ] {
        assert_eq!(last[field], status[field], "{field}");
    }
    assert_eq!(last["pairs"]["succeeded"], 40);
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l["state"] != "finished"),
        "the final state is printed once"
    );

    let text: Vec<&str> = text.lines().collect();
    let summary = text
        .iter()
        .position(|l| l.starts_with("run 1 (finished)"))
        .unwrap_or_else(|| panic!("the final summary: {text:#?}"));
    assert!(summary >= 1, "a line per interval first: {text:#?}");
    for line in &text[..summary] {
        assert!(
            line.contains(" run 1 ") && line.contains(" pairs ("),
            "{line}"
        );
        assert!(
            !line.contains('\x1b'),
            "no escapes off a terminal: {line:?}"
        );
    }
    assert!(text[summary..].iter().any(|l| l.starts_with("  pairs ")));
    assert_eq!(
        text.iter()
            .filter(|l| l.starts_with("run 1 (finished)"))
            .count(),
        1
    );
}

/// On a terminal (a pseudo-terminal here) `--watch` redraws one frame in place: the
/// cursor goes back up over the last frame, which is cleared; then the final summary.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_redraws_in_place_on_a_terminal() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    let r = Rehearsal::start(sim(Duration::from_millis(40)), fleet(30)).await;
    let input = r.input("in.csv", &own_keys(30));
    let input = input.to_str().unwrap();
    let (code, _, stderr) = r.run(&["plan", input], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");

    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the pointers given; the rest may be null.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty");
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let watcher = r
        .command(&["status", "--watch", "--interval", "100ms"])
        .env("TERM", "xterm")
        .stdout(std::process::Stdio::from(slave))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the terminal until the watcher has exited (then the read fails: EIO).
    let reader = std::thread::spawn(move || {
        let mut terminal = std::fs::File::from(master);
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = terminal.read(&mut buffer) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buffer[..n]);
        }
        bytes
    });
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                input,
                "--no-verify",
                "--rate",
                "20",
                "--concurrency",
                "2",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let out = tokio::time::timeout(LIMIT, watcher.wait_with_output())
        .await
        .expect("the watcher exits once the run is finished")
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let screen = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    let redraws = screen.matches("\r\x1b[J").count();
    assert!(redraws >= 2, "frames redrawn in place: {screen:?}");
    assert!(screen.contains("  pairs     [#"), "a bar: {screen:?}");
    assert!(screen.contains("Ctrl-C leaves"), "{screen:?}");
    let summary = screen.rfind("run 1 (finished)").expect("the summary");
    assert!(
        screen[..summary].ends_with("\x1b[J"),
        "the summary replaces the last frame: {screen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_reads_only() {
    let r = Rehearsal::start(sim(Duration::ZERO), fleet(1)).await;
    // No database: the watcher creates none.
    let (code, _, stderr) = r.run(&["status", "--watch"], LIMIT).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no such database file"), "{stderr}");
    assert!(!r.db.exists());
}

/// `--log-format json --log-file`: every line of the file is one JSON object, each
/// request an event with its run, job, action, region, endpoint, code, latency and
/// attempt (and its RequestId when answered), in a file only the owner can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_each_request() {
    let fleet = fleet(30);
    let config = SimConfig {
        faults: Faults {
            internal: 0.2,
            mutex: 0.1,
            ..Faults::default()
        },
        seed: 7,
        ..sim(Duration::from_millis(2))
    };
    let r = Rehearsal::start(config, fleet.clone()).await;
    let input = r.input("in.csv", &own_keys(30));
    let log = r.dir.path().join("keyfleet.log");
    let (code, _, stderr) = r
        .run(
            &[
                "--log-format",
                "json",
                "--log-file",
                log.to_str().unwrap(),
                "run",
                input.to_str().unwrap(),
                "--rate",
                "200",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(assert_audit(&r, &fleet).await.succeeded, 30);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the log file is owner-only");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let requests: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"] == "keyfleet::request")
        .collect();
    assert_eq!(
        requests.len(),
        r.sim.journal().len(),
        "one event per request the simulator saw"
    );
    for event in &requests {
        for field in [
            "timestamp",
            "level",
            "message",
            "run",
            "job",
            "action",
            "region",
            "endpoint",
            "code",
            "latency_ms",
            "attempt",
        ] {
            assert!(!event[field].is_null(), "{field} missing: {event}");
        }
        assert_eq!(event["run"], 1);
        assert_eq!(event["region"], GZ);
        assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
        if event["code"] == "ok" {
            assert!(event["request_id"].is_string(), "{event}");
        }
    }
    let refused = requests.iter().filter(|e| e["code"] != "ok").count();
    assert!(refused > 0, "the faults show in the log");
    assert!(
        requests.iter().filter(|e| e["code"] == "ok").count() >= 30,
        "every pair's success"
    );
    // `status --json` (and each `--watch` frame) lists the latest of those errors.
    let (code, status, stderr_status) = r.run(&["status", "--json"], LIMIT).await;
    assert_eq!(code, 0, "{stderr_status}");
    let status: Value = serde_json::from_str(&status).unwrap();
    let recent = status["recent_errors"].as_array().unwrap();
    assert_eq!(recent.len(), refused.min(5), "{status}");
    let last_refused: Vec<&Value> = requests
        .iter()
        .filter(|e| e["code"] != "ok")
        .map(|e| &e["code"])
        .collect();
    for error in recent {
        assert!(last_refused.contains(&&error["code"]), "{error}");
        assert_eq!(error["region"], GZ);
    }
    // The terminal still had the human summary (and no JSON: info events go to the file).
    assert!(stderr.contains("ok run 1: pairs 30 succeeded"), "{stderr}");
    assert!(!stderr.contains("keyfleet::request"), "{stderr}");
}

/// `--quiet`: on success, one line: the verdict, outcome word first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_prints_only_the_verdict() {
    let fleet = fleet(10);
    let r = Rehearsal::start(sim(Duration::ZERO), fleet.clone()).await;
    let input = r.input("in.csv", &own_keys(10));
    let (code, stdout, stderr) = r
        .run(&["--quiet", "run", input.to_str().unwrap()], LIMIT)
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "ok run 1: pairs 10 succeeded, 0 failed, 0 skipped, 0 rejected, 0 pending; verified gone 10 of 10"
        ),
        "{stderr}"
    );
    // The same shape for verify (and resume, retry).
    let (code, _, stderr) = r.run(&["-q", "verify"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("ok run 1: pairs 10 succeeded"),
        "{stderr}"
    );
    let (code, _, stderr) = r.run(&["-q", "retry"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.starts_with("ok run 1: pairs 10 succeeded"),
        "{stderr}"
    );
    // Off a terminal, and with NO_COLOR, no colour.
    let (_, _, stderr) = r.run(&["resume"], LIMIT).await;
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

async fn signal_mid_run(signal: &str) {
    let fleet = fleet(60);
    let r = Rehearsal::start(sim(Duration::from_millis(60)), fleet.clone()).await;
    let input = r.input("in.csv", &own_keys(60));
    let child = r
        .command(&[
            "run",
            input.to_str().unwrap(),
            "--rate",
            "20",
            "--progress",
            "none",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_for_requests(&r, 8).await;
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{signal}: {stderr}");
    assert!(
        stderr.contains(&format!("interrupt (SIG{signal})")),
        "{stderr}"
    );
    assert!(stderr.contains("interrupted run 1: pairs"), "{stderr}");
    assert!(stderr.contains("continue with: keyfleet"), "{stderr}");
    let at_stop = r.sim.journal().len();
    assert!(at_stop < 60, "{signal}: it stopped early");
    let store = r.store().await;
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE finished_at IS NULL")
        .fetch_one(store.pool_for_tests())
        .await
        .unwrap();
    assert_eq!(open, 0, "in-flight requests were recorded before exiting");
    store.close().await;

    let (code, _, stderr) = r
        .run(&["resume", "--rate", "200", "--progress", "none"], LIMIT)
        .await;
    assert_eq!(code, 0, "{stderr}");
    let audit = assert_audit(&r, &fleet).await;
    assert_eq!(audit.succeeded, 60);
    assert_eq!(audit.removed_as_asked, 60, "exactly the pairs asked for");
}

/// SIGTERM (a service manager's stop) ends a run like Ctrl-C: exit 4 (interrupted),
/// a resume hint, in-flight replies recorded; `resume` completes it exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_run_resumably() {
    signal_mid_run("TERM").await;
}

/// SIGHUP (the terminal closed) likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_stops_a_run_resumably() {
    signal_mid_run("HUP").await;
}

#[test]
fn completion_scripts_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Cmd::new(["completions", shell]).run();
        assert_eq!(out.code, Some(0), "{shell}: {}", out.stderr_text());
        let script = out.stdout_text();
        for command in ["status", "verify", "completions", "man"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let bash = Cmd::new(["completions", "bash"]).run().stdout_text();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("keyfleet.bash");
    std::fs::write(&script, &bash).unwrap();
    let Ok(syntax) = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
    else {
        println!("skipped: no bash to check the completion script with");
        return;
    };
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // What bash offers for `keyfleet sta<TAB>` and `keyfleet status --w<TAB>`.
    let complete = |words: &str, current: usize| {
        let shell = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={current}; COMP_LINE='{words}'; \
             COMP_POINT=${{#COMP_LINE}}; _keyfleet keyfleet \"${{COMP_WORDS[$COMP_CWORD]}}\" \
             \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &shell])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(complete("keyfleet sta", 1).trim(), "status");
    assert_eq!(complete("keyfleet status --w", 2).trim(), "--watch");
}

#[test]
fn man_pages_for_every_command_render_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let out = Cmd::new(["man", "--output-dir", dir.path().to_str().unwrap()]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    let mut pages: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for name in [
        "keyfleet.1",
        "keyfleet-run.1",
        "keyfleet-status.1",
        "keyfleet-call-describe.1",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    // One page printed is the page written.
    let run = Cmd::new(["man", "run"]).run();
    assert_eq!(
        run.stdout,
        std::fs::read(dir.path().join("keyfleet-run.1")).unwrap()
    );
    let unknown = Cmd::new(["man", "nosuch"]).run();
    assert_eq!(unknown.code, Some(2));
    assert!(
        unknown.stderr_text().contains("one of"),
        "{}",
        unknown.stderr_text()
    );

    for page in &pages {
        let roff = std::fs::read_to_string(page).unwrap();
        assert!(roff.contains(".TH "), "{}", page.display());
        assert!(roff.contains(".SH NAME"), "{}", page.display());
        assert!(roff.contains(".SH SYNOPSIS"), "{}", page.display());
    }
    let Ok(_) = std::process::Command::new("groff")
        .arg("--version")
        .output()
    else {
        println!("skipped: groff is not installed; the roff structure was checked");
        return;
    };
    for page in &pages {
        let out = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(page)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", page.display());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "groff warns about {}",
            page.display()
        );
    }
}

/// `docs/exit-codes.md`, `keyfleet codes --exit` and the constants in `main` agree.
#[test]
fn the_exit_code_table_is_the_one_in_the_docs() {
    let out = Cmd::new(["codes", "--exit", "--json"]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    let table: Vec<(u64, String)> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["code"].as_u64().unwrap(),
                row["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/exit-codes.md"),
    )
    .unwrap();
    let documented: Vec<(u64, String)> = docs
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells.get(1)?.parse().ok()?;
            Some((code, cells.get(2)?.trim_matches('`').to_string()))
        })
        .collect();
    assert_eq!(documented, table);
    assert!(table.contains(&(4, "stopped".to_string())));
    let text = Cmd::new(["codes", "--exit"]).run().stdout_text();
    assert_eq!(text.lines().count(), table.len());
}
