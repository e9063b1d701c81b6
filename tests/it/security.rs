//! Security checks: the SecretKey never leaves the process (database, -wal, logs at
//! trace level, reports, error output); the simulator refuses a tampered or stale
//! request; the database and reports are readable by their owner only.
//!
//! Each test runs the real binary against an in-process simulator on 127.0.0.1 with a
//! SecretKey found nowhere else, and HOME in a temp dir so no real profile is read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyfleet::secret::Secret;
use keyfleet::sign::{RequestParts, sign};
use keyfleet::sim::{self, Fleet, Instance, SimConfig, SimHandle};
use serde_json::{Value, json};

use crate::support::{Cmd, Output, TempDb};

const GZ: &str = "ap-guangzhou";
/// The SecretKey under test: distinctive, so a match can only be a leak.
const SECRET_KEY: &str = "kfLEAKCANARY7q3z9x1w5v8u2t6s4r0p";
const SECRET_ID: &str = "AKIDkeyfleetSecurityTest0000000000001";
/// A wrong key that must not show up either.
const WRONG_KEY: &str = "kfWRONGCANARY0a9b8c7d6e5f4g3h2i1j";

async fn start_sim(latency: Duration, fleet: Fleet) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let config = SimConfig {
        secret_id: SECRET_ID.to_string(),
        secret_key: Secret::new(SECRET_KEY.to_string()),
        rate: 0,
        latency: (latency, latency),
        ..SimConfig::default()
    };
    sim::start(listener, config, fleet)
        .await
        .expect("start sim")
}

/// Six instances with different key sets, so the plan has several jobs; the input
/// asks to remove every binding.
fn fleet_and_input() -> (Fleet, String) {
    let mut fleet = Fleet::new();
    let mut csv = String::from("instance_id,key_id,region\n");
    for n in 1..=6u32 {
        let instance = format!("ins-0000000{n}");
        let keys: Vec<String> = (1..=n.min(3)).map(|k| format!("skey-0000000{k}")).collect();
        for key in &keys {
            csv.push_str(&format!("{instance},{key},{GZ}\n"));
        }
        fleet = fleet.with(Instance::new(instance, GZ).keys(keys));
    }
    (fleet, csv)
}

/// A `keyfleet` command with the credentials in the environment and HOME in `home`.
fn keyfleet(home: &Path, key: &str, args: &[&str]) -> Cmd {
    Cmd::new(args)
        .env("HOME", home)
        .env("TENCENTCLOUD_SECRET_ID", SECRET_ID)
        .env("TENCENTCLOUD_SECRET_KEY", key)
}

/// Fails if `needle` (or its hex form) occurs anywhere in `haystack`.
fn assert_absent(what: &str, haystack: &[u8], needle: &str) {
    for form in [needle.to_string(), hex::encode(needle)] {
        let found = haystack
            .windows(form.len())
            .any(|w| w.eq_ignore_ascii_case(form.as_bytes()));
        assert!(!found, "the SecretKey appears in {what}");
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_key_appears_nowhere_and_files_are_owner_only() {
    let (fleet, csv) = fleet_and_input();
    let before = fleet.bindings();
    let simulator = start_sim(Duration::from_millis(40), fleet).await;
    let db = TempDb::new();
    let home = db.dir.path().join("home");
    std::fs::create_dir(&home).expect("home");
    let input = db.dir.path().join("unbind.csv");
    std::fs::write(&input, csv).expect("input");
    let report = db.dir.path().join("report.csv");
    let endpoint = simulator.endpoint();

    let db_path = db.path.clone();
    let (run, wal_mode) = {
        let home = home.clone();
        let input = input.clone();
        tokio::task::spawn_blocking(move || {
            let running = keyfleet(
                &home,
                SECRET_KEY,
                &[
                    "-vvv",
                    "--db",
                    db_path.to_str().unwrap(),
                    "--endpoint",
                    &endpoint,
                    "run",
                    input.to_str().unwrap(),
                    "--progress",
                    "none",
                    "--concurrency",
                    "1",
                ],
            )
            .env("RUST_LOG", "trace")
            .spawn();
            // The -wal exists while the run holds the database open: catch its mode then.
            let wal = PathBuf::from(format!("{}-wal", db_path.display()));
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut wal_mode = None;
            while wal_mode.is_none() && std::time::Instant::now() < deadline {
                if wal.exists() {
                    wal_mode = Some(mode(&wal));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (running.wait(), wal_mode)
        })
        .await
        .expect("run")
    };
    assert_eq!(run.code, Some(0), "{}", run.stderr_text());
    assert!(
        run.stderr_text().contains("TRACE"),
        "not the most verbose level: {}",
        run.stderr_text()
    );
    let after = simulator.fleet().bindings();
    assert!(
        after.is_empty() && !before.is_empty(),
        "left bound: {after:?}"
    );

    let db_arg = db.path.to_str().unwrap().to_string();
    let report_csv = keyfleet(
        &home,
        SECRET_KEY,
        &[
            "--db",
            &db_arg,
            "report",
            "--output",
            report.to_str().unwrap(),
        ],
    )
    .run();
    assert_eq!(report_csv.code, Some(0), "{}", report_csv.stderr_text());
    let mut outputs: Vec<(&str, &Output)> = vec![("the run", &run), ("report", &report_csv)];
    let others: Vec<(&str, Output)> = [
        ("report json", vec!["report", "--format", "json"]),
        ("status", vec!["status", "--json"]),
        ("runs", vec!["runs", "--json"]),
        ("resume", vec!["-vvv", "resume", "--progress", "none"]),
    ]
    .into_iter()
    .map(|(what, args)| {
        let mut all = vec!["--db", db_arg.as_str()];
        all.extend(args);
        (
            what,
            keyfleet(&home, SECRET_KEY, &all)
                .env("RUST_LOG", "trace")
                .run(),
        )
    })
    .collect();
    outputs.extend(others.iter().map(|(what, out)| (*what, out)));
    for (what, out) in outputs {
        assert_absent(&format!("stdout of {what}"), &out.stdout, SECRET_KEY);
        assert_absent(&format!("stderr of {what}"), &out.stderr, SECRET_KEY);
    }
    // Every byte of every file the runs left: the database, any -wal/-shm, the report, HOME.
    let files = files_under(db.dir.path());
    assert!(files.contains(&db.path) && files.contains(&report));
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        assert_absent(&file.display().to_string(), &bytes, SECRET_KEY);
    }

    #[cfg(unix)]
    {
        assert_eq!(mode(&db.path), 0o600, "database mode");
        assert_eq!(mode(&report), 0o600, "report mode");
        let wal_mode = wal_mode.expect("a -wal file while the run was open");
        assert_eq!(wal_mode, 0o600, "-wal mode while running");
        for suffix in ["-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", db.path.display()));
            if path.exists() {
                assert_eq!(mode(&path), 0o600, "{suffix} mode");
            }
        }
    }
    simulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_names_auth_failure_but_not_the_key() {
    let (fleet, csv) = fleet_and_input();
    let before = fleet.bindings();
    let simulator = start_sim(Duration::ZERO, fleet).await;
    let db = TempDb::new();
    let input = db.dir.path().join("unbind.csv");
    std::fs::write(&input, csv).expect("input");
    let endpoint = simulator.endpoint();
    let (home, db_arg) = (db.dir.path().to_path_buf(), db.path.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        keyfleet(
            &home,
            WRONG_KEY,
            &[
                "-vvv",
                "--db",
                &db_arg,
                "--endpoint",
                &endpoint,
                "run",
                input.to_str().unwrap(),
                "--progress",
                "none",
            ],
        )
        .env("RUST_LOG", "trace")
        .run()
    })
    .await
    .expect("run");
    let stderr = out.stderr_text();
    assert_eq!(
        out.code,
        Some(4),
        "a fatal error stops the run, resumable: {stderr}"
    );
    assert!(stderr.contains("AuthFailure"), "{stderr}");
    for key in [WRONG_KEY, SECRET_KEY] {
        assert_absent("stderr", &out.stderr, key);
        assert_absent("stdout", &out.stdout, key);
    }
    for file in files_under(db.dir.path()) {
        assert_absent(
            &file.display().to_string(),
            &std::fs::read(&file).unwrap(),
            WRONG_KEY,
        );
    }
    assert_eq!(simulator.fleet().bindings(), before, "nothing changed");
    simulator.shutdown().await;
}

/// The JSON log format (`--log-format json`, on stderr and in `--log-file`) at trace
/// level holds no SecretKey either, right or wrong, and every line of it parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_hold_no_secret_key() {
    let (fleet, csv) = fleet_and_input();
    let simulator = start_sim(Duration::ZERO, fleet).await;
    let db = TempDb::new();
    let input = db.dir.path().join("unbind.csv");
    std::fs::write(&input, csv).expect("input");
    let log = db.dir.path().join("keyfleet.log");
    let endpoint = simulator.endpoint();
    let (home, db_arg) = (db.dir.path().to_path_buf(), db.path.display().to_string());
    let (log_arg, input_arg) = (log.display().to_string(), input.display().to_string());
    let outputs = tokio::task::spawn_blocking(move || {
        let with = |key: &str, args: &[&str]| {
            let mut all = vec!["-vvv", "--db", &db_arg, "--endpoint", &endpoint];
            all.extend_from_slice(args);
            keyfleet(&home, key, &all).env("RUST_LOG", "trace").run()
        };
        vec![
            (
                "run, JSON on stderr",
                with(
                    SECRET_KEY,
                    &[
                        "--log-format",
                        "json",
                        "run",
                        &input_arg,
                        "--progress",
                        "none",
                    ],
                ),
            ),
            (
                "verify, JSON in the log file",
                with(
                    SECRET_KEY,
                    &["--log-format", "json", "--log-file", &log_arg, "verify"],
                ),
            ),
            (
                "verify with a wrong key, JSON on stderr",
                with(WRONG_KEY, &["--log-format", "json", "verify"]),
            ),
        ]
    })
    .await
    .expect("runs");
    let codes: Vec<Option<i32>> = outputs.iter().map(|(_, out)| out.code).collect();
    assert_eq!(
        codes,
        [Some(0), Some(0), Some(1)],
        "{}",
        outputs[2].1.stderr_text()
    );
    for (what, out) in &outputs {
        for key in [SECRET_KEY, WRONG_KEY] {
            assert_absent(&format!("stdout of {what}"), &out.stdout, key);
            assert_absent(&format!("stderr of {what}"), &out.stderr, key);
        }
    }
    let json_lines = |text: &str| -> Vec<Value> {
        text.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let on_stderr = json_lines(&outputs[0].1.stderr_text());
    assert!(
        on_stderr.iter().any(|e| e["level"] == "TRACE"),
        "not the most verbose level"
    );
    assert!(on_stderr.iter().any(|e| e["target"] == "keyfleet::request"));
    assert!(
        outputs[2].1.stderr_text().contains("AuthFailure"),
        "{}",
        outputs[2].1.stderr_text()
    );
    let in_file = std::fs::read_to_string(&log).expect("log file");
    assert_eq!(
        json_lines(&in_file).len(),
        in_file.lines().count(),
        "only JSON lines"
    );
    assert!(
        json_lines(&in_file)
            .iter()
            .any(|e| e["action"] == "DescribeInstances")
    );
    for file in files_under(db.dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for key in [SECRET_KEY, WRONG_KEY] {
            assert_absent(&file.display().to_string(), &bytes, key);
        }
    }
    #[cfg(unix)]
    assert_eq!(mode(&log), 0o600, "log file mode");
    simulator.shutdown().await;
}

/// A signed `DisassociateInstancesKeyPairs`, sent as given; `body` may differ from what was signed.
async fn send_signed(endpoint: &str, signed_body: &str, sent_body: &str, timestamp: i64) -> Value {
    let host = endpoint.trim_start_matches("http://").to_string();
    let headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("Host", host),
    ];
    let parts = RequestParts {
        method: "POST",
        path: "/",
        query: "",
        headers: headers.iter().map(|(n, v)| (*n, v.as_str())).collect(),
        payload: signed_body.as_bytes(),
    };
    let signature = sign(
        &parts,
        sim::SERVICE,
        timestamp,
        SECRET_ID,
        &Secret::new(SECRET_KEY.to_string()),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut request = client
        .post(format!("{endpoint}/"))
        .body(sent_body.to_string());
    for (name, value) in &headers {
        request = request.header(*name, value);
    }
    request
        .header("X-TC-Action", "DisassociateInstancesKeyPairs")
        .header("X-TC-Version", sim::API_VERSION)
        .header("X-TC-Region", GZ)
        .header("X-TC-Timestamp", timestamp.to_string())
        .header("Authorization", signature.authorization)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("JSON reply")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[tokio::test]
async fn the_simulator_refuses_a_changed_body_and_a_stale_timestamp() {
    let fleet = Fleet::new()
        .with(Instance::new("ins-00000001", GZ).keys(["skey-00000001"]))
        .with(Instance::new("ins-00000002", GZ).keys(["skey-00000001"]));
    let simulator = start_sim(Duration::ZERO, fleet).await;
    let endpoint = simulator.endpoint();
    let code = |reply: &Value| {
        reply["Response"]["Error"]["Code"]
            .as_str()
            .map(str::to_string)
    };
    let asked = json!({"InstanceIds": ["ins-00000001"], "KeyIds": ["skey-00000001"]}).to_string();
    let swapped = json!({"InstanceIds": ["ins-00000002"], "KeyIds": ["skey-00000001"]}).to_string();

    // The same signature over another body: refused, and nothing applied.
    let replayed = send_signed(&endpoint, &asked, &swapped, now_secs()).await;
    assert_eq!(
        code(&replayed).as_deref(),
        Some("AuthFailure.SignatureFailure"),
        "{replayed}"
    );
    // Signed 400 s ago (the API allows 300): refused as expired.
    let stale = send_signed(&endpoint, &asked, &asked, now_secs() - 400).await;
    assert_eq!(
        code(&stale).as_deref(),
        Some("AuthFailure.SignatureExpire"),
        "{stale}"
    );
    let untouched: BTreeSet<_> = simulator.fleet().bindings();
    assert_eq!(untouched.len(), 2, "nothing applied: {untouched:?}");

    // The control: the very same request, fresh and untampered, is applied.
    let fresh = send_signed(&endpoint, &asked, &asked, now_secs()).await;
    assert_eq!(code(&fresh), None, "{fresh}");
    let left: Vec<_> = simulator.fleet().bindings().into_iter().collect();
    assert_eq!(
        left,
        [("ins-00000002".to_string(), "skey-00000001".to_string())]
    );
    simulator.shutdown().await;
}

#[test]
#[should_panic(expected = "the SecretKey appears in")]
fn the_leak_check_finds_a_key_in_hex() {
    let mut bytes = b"prefix ".to_vec();
    bytes.extend(hex::encode(SECRET_KEY).to_uppercase().into_bytes());
    assert_absent("a sample", &bytes, SECRET_KEY);
}

// ---------------------------------------------------------------- transport

/// Proxy variables pointing at `proxy`, every spelling reqwest reads, and no exclusions.
fn through_proxy(cmd: Cmd, proxy: &str) -> Cmd {
    [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .fold(cmd, |cmd, name| cmd.env(name, proxy))
    .env("NO_PROXY", "")
    .env("no_proxy", "")
}

/// A capture listener on 127.0.0.1 standing in for a proxy on the way to a remote
/// host: it records every connection it gets and answers 502.
struct Capture {
    address: std::net::SocketAddr,
    received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Capture {
    fn start() -> Capture {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let address = listener.local_addr().expect("address");
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        // Detached: it ends with the test binary; each connection is bounded by a read timeout.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut bytes = Vec::new();
                let mut buf = [0u8; 4096];
                while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock().expect("log").push(bytes);
                let _ = stream.write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Capture { address, received }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().expect("log").clone()
    }
}

/// The audit's finding 1: `--endpoint http://<name>.invalid` with a proxy sent the
/// Authorization header and token in clear. Now `call` and `run` refuse before a
/// single byte leaves (the capture proxy gets no connection at all); with
/// `--insecure-http` the same request does go out, with a warning, which shows the
/// capture would have seen it.
#[test]
fn an_http_endpoint_on_another_host_is_refused_before_any_byte_is_sent() {
    let capture = Capture::start();
    let proxy = format!("http://proxyuser:proxypass@{}", capture.address);
    let db = TempDb::new();
    let input = db.dir.path().join("unbind.csv");
    std::fs::write(&input, fleet_and_input().1).expect("input");
    let endpoint = "http://keyfleet-test.invalid";
    let db_arg = db.path.to_str().unwrap();
    let describe = [
        "call",
        "describe",
        "--instance",
        "ins-00000001",
        "--region",
        GZ,
    ];
    let attempts: [Vec<&str>; 2] = [
        [&["--endpoint", endpoint][..], &describe].concat(),
        vec![
            "--db",
            db_arg,
            "--endpoint",
            endpoint,
            "run",
            input.to_str().unwrap(),
            "--progress",
            "none",
        ],
    ];
    for args in &attempts {
        let out = through_proxy(keyfleet(db.dir.path(), SECRET_KEY, args), &proxy)
            .env("TENCENTCLOUD_TOKEN", "kfTOKENCANARY")
            .run();
        let stderr = out.stderr_text();
        assert_eq!(out.code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("uses http:// to a host that is not this machine")
                && stderr.contains("--insecure-http"),
            "{stderr}"
        );
    }
    assert_eq!(
        capture.received(),
        Vec::<Vec<u8>>::new(),
        "bytes reached the proxy"
    );

    // The positive control: allowed explicitly, the request goes out, and says so.
    let args = [
        &["-v", "--insecure-http", "--endpoint", endpoint][..],
        &describe,
    ]
    .concat();
    let out = through_proxy(keyfleet(db.dir.path(), SECRET_KEY, &args), &proxy).run();
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(stderr.contains("warning: --insecure-http"), "{stderr}");
    assert!(stderr.contains("Transport.HttpStatus"), "{stderr}");
    // The proxy is logged at info level, without its credentials.
    assert!(
        stderr.contains("requests go through a proxy")
            && stderr.contains(&capture.address.to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("proxypass"), "{stderr}");
    let received = capture.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let head = String::from_utf8_lossy(&received[0]);
    assert!(
        head.starts_with("POST http://keyfleet-test.invalid/"),
        "{head}"
    );
}

// ---------------------------------------------------------------- terminal and spreadsheet

/// Characters that can act on a terminal: C0 (but the line feeds of the output), DEL, C1.
fn controls_in(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect()
}

/// The audit's finding 4: `report --only rejected | cat -v` showed an OSC title, colour
/// codes and `=HYPERLINK(...)`. Now the CSV report and the human output hold no
/// control character and no cell a spreadsheet would run as a formula; `--raw` and
/// JSON keep the bytes exactly.
#[test]
fn hostile_rows_reach_neither_a_terminal_nor_a_spreadsheet_raw() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile");
    let db = TempDb::new();
    let db_arg = db.path.to_str().unwrap();
    for file in ["terminal_escapes.csv", "formula_cells.csv"] {
        let input = corpus.join(file);
        let planned = Cmd::new(["--db", db_arg, "plan", input.to_str().unwrap()]).run();
        assert_eq!(planned.code, Some(0), "{}", planned.stderr_text());
        assert_eq!(
            controls_in(&planned.stderr_text()),
            Vec::<char>::new(),
            "plan output"
        );

        let run_id = Cmd::new(["--db", db_arg, "runs", "--json"]).run().json()[0]["run_id"]
            .as_i64()
            .expect("run id")
            .to_string();
        let report = Cmd::new(["--db", db_arg, "report", &run_id]).run();
        assert_eq!(report.code, Some(0), "{}", report.stderr_text());
        let text = report.stdout_text();
        assert_eq!(controls_in(&text), Vec::<char>::new(), "{file}: {text}");
        let mut cells = 0;
        for record in csv::Reader::from_reader(text.as_bytes()).records() {
            for cell in record.expect("csv").iter() {
                cells += 1;
                assert!(
                    !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                    "{file}: cell {cell:?} starts a formula"
                );
            }
        }
        assert!(cells > 20, "{file}: {text}");
        let status = Cmd::new(["--db", db_arg, "status", &run_id]).run();
        assert_eq!(controls_in(&status.stdout_text()), Vec::<char>::new());

        // Byte for byte: every rejected raw text (as kept, up to 40 characters) is
        // in the --raw report exactly as JSON gives it.
        let raw = Cmd::new(["--db", db_arg, "report", &run_id, "--raw"]).run();
        assert_eq!(raw.code, Some(0), "{}", raw.stderr_text());
        let raw_text = raw.stdout_text();
        let json = Cmd::new(["--db", db_arg, "report", &run_id, "--format", "json"]).run();
        for row in json.json().as_array().expect("rows") {
            for column in ["instance_id", "key_id", "region"] {
                let Some(value) = row[column].as_str() else {
                    continue;
                };
                let mut writer = csv::Writer::from_writer(Vec::new());
                writer.write_field(value).expect("csv field");
                let quoted = String::from_utf8(writer.into_inner().expect("csv")).expect("utf-8");
                assert!(raw_text.contains(&quoted), "{file}: --raw lacks {value:?}");
            }
        }
    }
    let raw = Cmd::new(["--db", db_arg, "report", "1", "--raw"])
        .run()
        .stdout;
    for hostile in [
        &b"\x1b]0;owned by keyfleet-test\x07"[..],
        b"\x1b[2J\x1b[31m",
        b"\xc2\x9b31m",
    ] {
        assert!(
            raw.windows(hostile.len()).any(|w| w == hostile),
            "--raw lost {hostile:?}"
        );
    }
}

/// A tiny endpoint on 127.0.0.1 that answers every request with `reply` (HTTP 200).
fn fake_endpoint(reply: &'static str) -> String {
    serve(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    ))
}

/// A server on 127.0.0.1 that reads each request whole and answers it with `response`.
fn serve(response: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut bytes = Vec::new();
            let mut buf = [0u8; 4096];
            // Head, then as many body bytes as Content-Length says.
            let body_start = loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
                if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(body_start) = body_start else {
                continue;
            };
            let head = String::from_utf8_lossy(&bytes[..body_start]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while bytes.len() < body_start + length {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(response.as_bytes());
        }
    });
    endpoint
}

/// The audit's fake server cleared the screen through an error code. Now the code,
/// the message and the RequestId are escaped wherever they are shown: `call`, the
/// run summary and `status`.
#[test]
fn an_endpoints_error_reply_cannot_drive_the_terminal() {
    let endpoint = fake_endpoint(
        r#"{"Response":{"Error":{"Code":"\u001b[2JInternalError.\u001b[31mOwned","Message":"\u001b]0;pwned\u0007boom \u009b2J"},"RequestId":"\u001b[5mr-1"}}"#,
    );
    let db = TempDb::new();
    let db_arg = db.path.to_str().unwrap();
    let call = keyfleet(
        db.dir.path(),
        SECRET_KEY,
        &[
            "--endpoint",
            &endpoint,
            "call",
            "describe",
            "--instance",
            "ins-00000001",
            "--region",
            GZ,
        ],
    )
    .run();
    let stderr = call.stderr_text();
    assert_eq!(call.code, Some(1), "{stderr}");
    assert!(stderr.contains("\\u{1b}[2JInternalError"), "{stderr}");
    assert_eq!(controls_in(&stderr), Vec::<char>::new(), "{stderr}");

    let input = db.dir.path().join("unbind.csv");
    std::fs::write(&input, fleet_and_input().1).expect("input");
    let run = keyfleet(
        db.dir.path(),
        SECRET_KEY,
        &[
            "--db",
            db_arg,
            "--endpoint",
            &endpoint,
            "run",
            input.to_str().unwrap(),
            "--progress",
            "none",
        ],
    )
    .run();
    let stderr = run.stderr_text();
    // An unknown code is Fatal: the run stops, resumable, and the summary says why.
    assert_eq!(run.code, Some(4), "{stderr}");
    assert!(stderr.contains("\\u{1b}]0;pwned"), "{stderr}");
    assert_eq!(controls_in(&stderr), Vec::<char>::new(), "{stderr}");
    let status = Cmd::new(["--db", db_arg, "status"]).run();
    let stdout = status.stdout_text();
    assert!(stdout.contains("stopped because"), "{stdout}");
    assert_eq!(controls_in(&stdout), Vec::<char>::new(), "{stdout}");
}

// ---------------------------------------------------------------- credentials and budgets

/// ssh warns about a private key others can read; keyfleet warns the same way about a
/// credential file, naming it, and still works.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_file_others_can_read_gets_a_warning_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let (fleet, _) = fleet_and_input();
    let simulator = start_sim(Duration::ZERO, fleet).await;
    let db = TempDb::new();
    let tccli = db.dir.path().join(".tccli");
    std::fs::create_dir(&tccli).expect("dir");
    let file = tccli.join("default.credential");
    std::fs::write(
        &file,
        format!(r#"{{"secretId": "{SECRET_ID}", "secretKey": "{SECRET_KEY}"}}"#),
    )
    .expect("credential file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let endpoint = simulator.endpoint();
    let home = db.dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Cmd::new([
            "--endpoint",
            &endpoint,
            "call",
            "describe",
            "--instance",
            "ins-00000001",
            "--region",
            GZ,
        ])
        .env("HOME", &home)
        .run()
    })
    .await
    .expect("call");
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {}: readable or writable by group or others (mode 0644)",
            file.display()
        )),
        "{stderr}"
    );
    assert_absent("the warning", &out.stderr, SECRET_KEY);
    simulator.shutdown().await;
}

/// The audit's 30 KB set row of 1,000 x 1,000 ids took 383 MB: now it is one rejected
/// item with a positioned reason; and an input with more than
/// `MAX_REJECTED_PAIRS_PER_INPUT` rejected pairs is refused whole, nothing written.
#[test]
fn set_rows_and_rejections_have_a_budget() {
    use keyfleet::plan::{MAX_PAIRS_PER_SET_ROW, MAX_REJECTED_PAIRS_PER_INPUT};
    let db = TempDb::new();
    let db_arg = db.path.to_str().unwrap();
    let ids: Vec<String> = (0..1000).map(|n| format!("ins-x{n:07}")).collect();
    let keys: Vec<String> = (0..1000).map(|n| format!("skey-x{n:07}")).collect();
    let set = json!([
        {"InstanceIds": ids, "KeyIds": keys, "Region": GZ},
        {"InstanceId": "ins-00000001", "KeyId": "skey-00000001", "Region": GZ}
    ]);
    let input = db.dir.path().join("big-set.json");
    std::fs::write(&input, set.to_string()).expect("input");
    let out = Cmd::new(["--db", db_arg, "plan", input.to_str().unwrap(), "--json"]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    let summary = out.json();
    assert_eq!(summary["pairs"], 1, "{summary}");
    assert_eq!(summary["rejected"], 1, "{summary}");
    let reason = summary["rejections"][0]["reason"].as_str().expect("reason");
    assert_eq!(summary["rejections"][0]["position"], "index 0");
    assert!(
        reason.contains("1000000 pairs (1000 instances x 1000 keys)")
            && reason.contains(&format!("more than {MAX_PAIRS_PER_SET_ROW} per row")),
        "{reason}"
    );

    let mut csv = String::from("instance_id,key_id,region\n");
    for n in 0..=MAX_REJECTED_PAIRS_PER_INPUT {
        csv.push_str(&format!("bad-{n},skey-00000001,{GZ}\n"));
    }
    let flood = db.dir.path().join("flood.csv");
    std::fs::write(&flood, csv).expect("flood");
    let out = Cmd::new(["--db", db_arg, "plan", flood.to_str().unwrap()]).run();
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(2), "{stderr}");
    assert!(
        stderr.contains("flood.csv")
            && stderr.contains(&format!(
                "more than {MAX_REJECTED_PAIRS_PER_INPUT} input pairs rejected"
            )),
        "{stderr}"
    );
    let runs = Cmd::new(["--db", db_arg, "runs", "--json"]).run().json();
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(1),
        "the flood was written: {runs}"
    );
}

/// Redirects stay off: a signed request answered with a 307 is `Transport.HttpStatus`,
/// and the redirect's target receives nothing (following it would send the signature,
/// the SecretId and the token elsewhere).
#[test]
fn a_redirect_is_not_followed() {
    let target = Capture::start();
    let endpoint = serve(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{}/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        target.address
    ));
    let db = TempDb::new();
    let out = keyfleet(
        db.dir.path(),
        SECRET_KEY,
        &[
            "--endpoint",
            &endpoint,
            "call",
            "describe",
            "--instance",
            "ins-00000001",
            "--region",
            GZ,
        ],
    )
    .run();
    let stderr = out.stderr_text();
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(
        stderr.contains("Transport.HttpStatus") && stderr.contains("307"),
        "{stderr}"
    );
    assert_eq!(
        target.received(),
        Vec::<Vec<u8>>::new(),
        "the redirect was followed"
    );
}
