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

/// Environment variables that would make a test depend on the machine it runs on.
const AMBIENT_ENV: [&str; 9] = [
    "KEYFLEET_DB",
    "KEYFLEET_ENDPOINT",
    "TENCENTCLOUD_SECRET_ID",
    "TENCENTCLOUD_SECRET_KEY",
    "TENCENTCLOUD_TOKEN",
    "TENCENTCLOUD_REGION",
    "TCCLI_PROFILE",
    "RUST_LOG",
    "KEYFLEET_SIM_SECRET_KEY",
];

/// One invocation of the binary, built up and then run with a time limit.
pub struct Cmd {
    command: std::process::Command,
    stdin: Option<Vec<u8>>,
    timeout: std::time::Duration,
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
    /// `keyfleet ARGS...`, with the machine's keyfleet/Tencent settings removed and a 20 s limit.
    pub fn new<I, S>(args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = std::process::Command::new(keyfleet_bin());
        command.args(args);
        for name in AMBIENT_ENV {
            command.env_remove(name);
        }
        Cmd {
            command,
            stdin: None,
            timeout: std::time::Duration::from_secs(20),
        }
    }

    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Cmd {
        self.command.env(name, value);
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
