//! The `keyfleet sim` command: serving, its key, refusing public addresses.

use super::*;

#[tokio::test]
async fn keyfleet_sim_serves_from_the_command_line() {
    let mut child = Child(
        support::Cmd::bare()
            .into_std()
            .args([
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--generate",
                "30",
                "--seed",
                "9",
                "--rate",
                "10",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keyfleet sim"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("printed in time")
    .unwrap()
    .unwrap();
    let printed: Value = serde_json::from_str(&line).expect("one JSON line");
    let endpoint = printed["endpoint"].as_str().unwrap();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert_eq!(printed["seed"], json!(9));

    let fleet = Fleet::generate(30, 9, &Mix::default());
    let target = fleet
        .instances()
        .iter()
        .find(|i| {
            i.state == InstanceState::Stopped
                && i.os == Os::Linux
                && !i.banned
                && !i.frozen
                && !i.stop_charging
                && i.busy_for_ms.is_none()
        })
        .unwrap();
    let mut call =
        Call::unbind(&[&target.instance_id], &[&target.key_ids[0]]).region(&target.region);
    call.secret_id = printed["secret_id"].as_str().unwrap().to_string();
    call.secret_key = printed["secret_key"].as_str().unwrap().to_string();
    call.send_to(endpoint).await.unwrap().assert_success();

    let mut wrong = call.clone();
    wrong.secret_id = sim::TEST_SECRET_ID.to_string();
    wrong
        .send_to(endpoint)
        .await
        .unwrap()
        .assert_error("AuthFailure.SecretIdNotFound");

    // And `keyfleet call disassociate` against it, as a user would check a rehearsal.
    let home = tempfile::tempdir().unwrap();
    let output = support::Cmd::bare()
        .into_std()
        .args([
            "call",
            "disassociate",
            "--endpoint",
            endpoint,
            "--region",
            &target.region,
        ])
        .args([
            "--instance",
            &target.instance_id,
            "--key",
            &target.key_ids[0],
        ])
        .env_clear()
        .env("HOME", home.path())
        .env(
            "TENCENTCLOUD_SECRET_ID",
            printed["secret_id"].as_str().unwrap(),
        )
        .env(
            "TENCENTCLOUD_SECRET_KEY",
            printed["secret_key"].as_str().unwrap(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim().len(), 36, "a RequestId: {stdout}");
}

/// Starts `keyfleet sim` with `args` and `env`, and returns its printed JSON line and
/// its stderr so far (the child is killed on drop).
fn sim_cli(args: &[&str], env: &[(&str, &str)]) -> (Child, Value) {
    let mut command = support::Cmd::bare().into_std();
    command
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--generate",
            "5",
            "--seed",
            "3",
        ])
        .args(args)
        .env_remove("KEYFLEET_SIM_SECRET_KEY")
        .env_remove("KEYFLEET_SIM_SECRET_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = Child(command.spawn().expect("spawn keyfleet sim"));
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let printed = serde_json::from_str(&line).unwrap_or_else(|_| panic!("one JSON line: {line:?}"));
    (child, printed)
}

/// Reads the child's stderr up to its "Ctrl-C stops." line.
fn stderr_banner(child: &mut Child) -> String {
    let mut text = String::new();
    let mut reader = BufReader::new(child.0.stderr.take().unwrap());
    while !text.contains("Ctrl-C stops.") {
        if reader.read_line(&mut text).unwrap() == 0 {
            break;
        }
    }
    text
}

#[tokio::test]
async fn keyfleet_sim_takes_its_key_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sim.key");
    std::fs::write(&file, "keyFromAFile0000\n").unwrap();
    let id = [("KEYFLEET_SIM_SECRET_ID", "AKIDfromfile")];
    let (mut from_file, printed) = sim_cli(&["--secret-key-file", file.to_str().unwrap()], &id);
    assert_eq!(
        printed["secret_key"],
        Value::Null,
        "a given key is not echoed"
    );
    let banner = stderr_banner(&mut from_file);
    assert!(!banner.contains("keyFromAFile"), "{banner}");
    let mut call = Call::new("DescribeInstances", json!({}));
    call.secret_id = "AKIDfromfile".to_string();
    call.secret_key = "keyFromAFile0000".to_string();
    let endpoint = printed["endpoint"].as_str().unwrap().to_string();
    call.send_to(&endpoint).await.unwrap().assert_success();

    let env = [
        ("KEYFLEET_SIM_SECRET_ID", "AKIDfromenv"),
        ("KEYFLEET_SIM_SECRET_KEY", "keyFromTheEnv000"),
    ];
    let (_from_env, printed) = sim_cli(&[], &env);
    call.secret_id = "AKIDfromenv".to_string();
    call.secret_key = "keyFromTheEnv000".to_string();
    let endpoint = printed["endpoint"].as_str().unwrap().to_string();
    call.send_to(&endpoint).await.unwrap().assert_success();

    // The flag still works, with a warning.
    let (mut from_flag, printed) = sim_cli(
        &[
            "--secret-id",
            "AKIDflag",
            "--secret-key",
            "keyFromTheFlag00",
        ],
        &[],
    );
    let banner = stderr_banner(&mut from_flag);
    assert!(banner.contains("--secret-key is deprecated"), "{banner}");
    call.secret_id = "AKIDflag".to_string();
    call.secret_key = "keyFromTheFlag00".to_string();
    let endpoint = printed["endpoint"].as_str().unwrap().to_string();
    call.send_to(&endpoint).await.unwrap().assert_success();

    // An id without a key is refused, naming both ways to give one.
    let out = support::Cmd::new(["sim", "--listen", "127.0.0.1:0", "--secret-id", "AKIDx"]).run();
    assert_eq!(out.code, Some(2));
    let stderr = out.stderr_text();
    assert!(
        stderr.contains("--secret-key-file") && stderr.contains("KEYFLEET_SIM_SECRET_KEY"),
        "{stderr}"
    );
}

#[test]
fn keyfleet_sim_refuses_a_public_listen_address() {
    let output = support::Cmd::bare()
        .into_std()
        .args(["sim", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-non-loopback"), "{stderr}");
}
