//! Shared fixtures for the integration tests: temp databases, the binary's path.

#![allow(dead_code)]

use std::path::PathBuf;

/// The `keyfleet` binary built for these tests.
pub fn keyfleet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keyfleet"))
}

/// A fresh temporary directory with a database path inside it.
pub struct TempDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempDb {
    pub fn new() -> TempDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keyfleet.db");
        TempDb { dir, path }
    }
}

/// A simulator on 127.0.0.1 and the `keyfleet` binary pointed at it, with a
/// private HOME (so no real profile is ever read) and a temp database.
pub struct Rehearsal {
    pub sim: keyfleet::sim::SimHandle,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
}

impl Rehearsal {
    pub async fn start(config: keyfleet::sim::SimConfig, fleet: keyfleet::sim::Fleet) -> Rehearsal {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let sim = keyfleet::sim::start(listener, config, fleet)
            .await
            .expect("start simulator");
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("keyfleet.db");
        Rehearsal { sim, dir, db }
    }

    /// Writes `rows` (instance, key, region) as a CSV input and returns its path.
    pub fn input(&self, name: &str, rows: &[(String, String, String)]) -> PathBuf {
        let mut csv = String::from("instance_id,key_id,region\n");
        for (instance, key, region) in rows {
            csv.push_str(&format!("{instance},{key},{region}\n"));
        }
        let path = self.dir.path().join(name);
        std::fs::write(&path, csv).expect("write input");
        path
    }

    /// `keyfleet --db DB --endpoint SIM ARGS...` with the simulator's test credentials.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        self.command_at(&self.sim.endpoint(), args)
    }

    /// The same with another `--endpoint` (a `{region}` template, say).
    pub fn command_at(&self, endpoint: &str, args: &[&str]) -> tokio::process::Command {
        self.cmd_at(endpoint, args).into_tokio()
    }

    /// [`Rehearsal::command_at`] as a [`Cmd`], to add to before it starts.
    pub fn cmd_at(&self, endpoint: &str, args: &[&str]) -> Cmd {
        Cmd::new([
            "--db".as_ref(),
            self.db.as_os_str(),
            "--endpoint".as_ref(),
            endpoint.as_ref(),
        ])
        .args(args)
        .home(self.dir.path())
        .sim_credentials()
    }

    /// Runs a command to completion within `limit`, returning (exit code, stdout, stderr).
    pub async fn run(&self, args: &[&str], limit: std::time::Duration) -> (i32, String, String) {
        let output = tokio::time::timeout(limit, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("keyfleet {args:?} did not finish within {limit:?}"))
            .expect("run keyfleet");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "keyfleet panicked:\n{stderr}");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        )
    }

    /// The store, opened read-write alongside (WAL lets a reader in while a run writes).
    pub async fn store(&self) -> keyfleet::store::Store {
        keyfleet::store::Store::open(&self.db)
            .await
            .expect("open store")
    }
}

/// A [`keyfleet::api::CvmClient`] for the simulator at `sim`, with its test credentials
/// and a 10 s request timeout.
pub fn sim_client(sim: &keyfleet::sim::SimHandle) -> keyfleet::api::CvmClient {
    let credentials = keyfleet::credentials::Credentials {
        secret_id: keyfleet::sim::TEST_SECRET_ID.to_string(),
        secret_key: keyfleet::secret::Secret::new(keyfleet::sim::TEST_SECRET_KEY),
        token: None,
        source: "test".to_string(),
    };
    let mut config = keyfleet::api::ClientConfig::new(sim.endpoint(), credentials);
    config.request_timeout = std::time::Duration::from_secs(10);
    keyfleet::api::CvmClient::new(config).expect("client for the simulator")
}

/// Instance ids `ins-` + 8 hex digits, distinct per `n`.
pub fn ins(n: usize) -> String {
    format!("ins-{n:08x}")
}

/// Key ids `skey-` + 8 hex digits, distinct per `n`.
pub fn key(n: usize) -> String {
    format!("skey-{n:08x}")
}

/// One invocation of the binary, built up and then run with a time limit.
pub struct Cmd {
    command: std::process::Command,
    stdin: Option<Vec<u8>>,
    timeout: std::time::Duration,
}

/// A process started from [`Cmd::into_std`], killed on every exit path so a failing
/// test leaves no server behind.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a finished invocation left behind.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: std::time::Duration,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout_text(),
                self.stderr_text()
            )
        })
    }
}

/// A process started by [`Cmd::spawn`], still running.
pub struct Running {
    child: std::process::Child,
    started: std::time::Instant,
    timeout: std::time::Duration,
    readers: Vec<std::thread::JoinHandle<Vec<u8>>>,
    label: String,
}

impl Cmd {
    /// `keyfleet ARGS...` in an environment the test owns: only `PATH` is kept (no
    /// keyfleet or Tencent Cloud setting of the machine leaks in), HOME names a
    /// directory that does not exist (no real `~/.tccli` profile may lend its region or
    /// credentials; tests that want a HOME set one), and a 20 s limit.
    pub fn new<I, S>(args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = std::process::Command::new(keyfleet_bin());
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent/keyfleet-test-home");
        Cmd {
            command,
            stdin: None,
            timeout: std::time::Duration::from_secs(20),
        }
    }

    /// `keyfleet` with no arguments yet (add them with [`Cmd::args`]).
    pub fn bare() -> Cmd {
        Cmd::new(std::iter::empty::<&str>())
    }

    /// The same invocation started through `sh` under `umask MASK`, so files it creates
    /// show what the binary itself enforces, whatever the caller's umask.
    pub fn under_umask(mut self, mask: &str) -> Cmd {
        let mut shell = std::process::Command::new("sh");
        shell
            .arg("-c")
            .arg(format!("umask {mask}; exec \"$0\" \"$@\""))
            .arg(self.command.get_program())
            .args(self.command.get_args())
            .env_clear();
        for (name, value) in self.command.get_envs() {
            if let Some(value) = value {
                shell.env(name, value);
            }
        }
        if let Some(dir) = self.command.get_current_dir() {
            shell.current_dir(dir);
        }
        self.command = shell;
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Cmd {
        self.command.env(name, value);
        self
    }

    /// HOME for this invocation (where profiles and INI files would be read).
    pub fn home(self, dir: impl AsRef<std::path::Path>) -> Cmd {
        self.env("HOME", dir.as_ref())
    }

    /// The simulator's test credentials in the environment.
    pub fn sim_credentials(self) -> Cmd {
        self.env("TENCENTCLOUD_SECRET_ID", keyfleet::sim::TEST_SECRET_ID)
            .env("TENCENTCLOUD_SECRET_KEY", keyfleet::sim::TEST_SECRET_KEY)
    }

    /// The command as built, for a test that drives the process itself (reads its
    /// output as it runs, signals it); stdin is closed.
    pub fn into_std(mut self) -> std::process::Command {
        self.command.stdin(std::process::Stdio::null());
        self.command
    }

    /// The same for async tests; the process is killed when the handle drops.
    pub fn into_tokio(self) -> tokio::process::Command {
        let mut command = tokio::process::Command::from(self.into_std());
        command.kill_on_drop(true);
        command
    }

    pub fn cwd(mut self, dir: impl AsRef<std::path::Path>) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn timeout(mut self, timeout: std::time::Duration) -> Cmd {
        self.timeout = timeout;
        self
    }

    pub fn spawn(mut self) -> Running {
        use std::io::{Read, Write};
        use std::process::Stdio;
        let label = format!("{:?}", self.command);
        self.command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = std::time::Instant::now();
        let mut child = self.command.spawn().expect("start keyfleet");
        if let (Some(bytes), Some(mut pipe)) = (self.stdin.take(), child.stdin.take()) {
            // A process that exits early closes the pipe: that broken pipe is not the test's failure.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let readers = vec![
            drain(Box::new(child.stdout.take().expect("stdout"))),
            drain(Box::new(child.stderr.take().expect("stderr"))),
        ];
        Running {
            child,
            started,
            timeout: self.timeout,
            readers,
            label,
        }
    }

    /// Runs to the end; see [`Running::wait`].
    pub fn run(self) -> Output {
        self.spawn().wait()
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit, killing the process and failing the test past the time limit;
    /// fails the test too if the process panicked.
    pub fn wait(mut self) -> Output {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for keyfleet") {
                break status;
            }
            if self.started.elapsed() > self.timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.readers.pop().map(|r| r.join().unwrap_or_default());
                panic!(
                    "{} did not finish within {:?}; stderr:\n{}",
                    self.label,
                    self.timeout,
                    String::from_utf8_lossy(&stderr.unwrap_or_default())
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        let mut outputs = self
            .readers
            .into_iter()
            .map(|r| r.join().unwrap_or_default());
        let output = Output {
            code: status.code(),
            stdout: outputs.next().unwrap_or_default(),
            stderr: outputs.next().unwrap_or_default(),
            elapsed,
        };
        let stderr = output.stderr_text();
        assert!(
            !stderr.contains("panicked"),
            "{} panicked:\n{stderr}",
            self.label
        );
        output
    }
}

/// A run's reported outcomes as the simulator's audit takes them (its own row type).
pub fn audit_rows(
    outcomes: Vec<keyfleet::store::queue::PairOutcome>,
) -> Vec<keyfleet::sim::audit::PairOutcome> {
    outcomes
        .into_iter()
        .map(|o| keyfleet::sim::audit::PairOutcome {
            region: o.region,
            instance_id: o.instance_id,
            key_id: o.key_id,
            status: o.status,
            request_id: o.request_id,
            error_code: o.error_code,
        })
        .collect()
}
