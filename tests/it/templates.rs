//! Templates that hand a leaked key out, changed through the run's queue
//! (`run --templates FILE`): a rotation gives each launch template version a new
//! version with the new key (made the default when the old one was) and each launch
//! configuration new `LoginSettings`, other settings unchanged; without a rotation
//! target the leaked key is removed where another remains and a template whose only key
//! it is stays as it was. A CreateLaunchTemplateVersion whose outcome is unknown (no
//! reply, a kill) is never sent twice.

use std::time::Duration;

use keyfleet::cvm::Action;
use keyfleet::sim::{
    Faults, Fleet, Instance, KeyPair, LaunchConfiguration, LaunchTemplate, SimConfig,
};

use crate::support::{Rehearsal, ins};

const LIMIT: Duration = Duration::from_secs(120);
const GZ: &str = "ap-guangzhou";
const SH: &str = "ap-shanghai";
pub const LEAKED: &str = "skey-1eaked0a";
pub const NEW: &str = "skey-n3wkey00";
const OTHER: &str = "skey-0ther000";

fn quiet() -> SimConfig {
    SimConfig {
        rate: 0,
        settle_after: Duration::from_millis(50),
        ..SimConfig::default()
    }
}

/// lt-a: its only version, the default, hands out the leaked key alone. lt-b: version 1
/// (not the default) holds it beside another key. asc-a (Shanghai): the leaked key
/// alone, on a larger instance type; asc-b: beside another key. lt-c and asc-c hold
/// only other keys.
pub fn estate() -> Fleet {
    let mut asc_a = LaunchConfiguration::new("asc-0000000a", "web-asg", SH).keys([LEAKED]);
    asc_a.instance_type = "S5.LARGE8".into();
    let mut fleet = Fleet::new()
        .with_key_pair(KeyPair::new(LEAKED).name("deploy"))
        .with_key_pair(KeyPair::new(NEW).name("deploy-2026"))
        .with_key_pair(KeyPair::new(OTHER).name("ops"))
        .with_template(LaunchTemplate::new("lt-0000000a", "web", GZ).version([LEAKED]))
        .with_template(
            LaunchTemplate::new("lt-0000000b", "api", GZ)
                .version([LEAKED, OTHER])
                .version([OTHER])
                .default_version(2),
        )
        .with_template(LaunchTemplate::new("lt-0000000c", "batch", SH).version([OTHER]))
        .with_configuration(asc_a)
        .with_configuration(
            LaunchConfiguration::new("asc-0000000b", "api-asg", GZ).keys([OTHER, LEAKED]),
        )
        .with_configuration(LaunchConfiguration::new("asc-0000000c", "ops-asg", GZ).keys([OTHER]));
    for n in 0..6 {
        let region = if n % 2 == 0 { GZ } else { SH };
        fleet = fleet.with(Instance::new(ins(n), region).keys([LEAKED, OTHER]));
    }
    fleet
}

/// `discover` (with `--rotate-to` when given) writes the input and the templates file.
pub async fn discover(r: &Rehearsal, rotate_to: Option<&str>) -> (String, String) {
    let input = r.dir.path().join("found.csv");
    let templates = r.dir.path().join("templates.csv");
    let mut args = vec![
        "discover",
        "--key",
        LEAKED,
        "--all-regions",
        "--output",
        input.to_str().unwrap(),
        "--templates-output",
        templates.to_str().unwrap(),
    ];
    if let Some(key) = rotate_to {
        args.extend(["--rotate-to", key]);
    }
    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    (
        input.to_str().unwrap().to_string(),
        templates.to_str().unwrap().to_string(),
    )
}

fn template(fleet: &Fleet, id: &str) -> LaunchTemplate {
    fleet
        .launch_templates
        .iter()
        .find(|t| t.template_id == id)
        .cloned()
        .unwrap()
}

fn configuration(fleet: &Fleet, id: &str) -> LaunchConfiguration {
    fleet
        .launch_configurations
        .iter()
        .find(|c| c.configuration_id == id)
        .cloned()
        .unwrap()
}

fn sent(r: &Rehearsal, action: Action) -> usize {
    r.sim
        .journal()
        .iter()
        .filter(|e| e.action == action.name())
        .count()
}

/// The rotation's target everywhere, other settings unchanged, nothing extra written.
fn assert_rotated(r: &Rehearsal, before: &Fleet) {
    let after = r.sim.fleet();
    let a = template(&after, "lt-0000000a");
    assert_eq!(a.versions.len(), 2, "one new version: {a:?}");
    assert_eq!(a.default_version, 2, "the new version is the default");
    assert_eq!(a.versions[1].key_ids, [NEW]);
    assert_eq!(a.versions[1].instance_type, a.versions[0].instance_type);
    assert!(
        a.versions[1].description.starts_with("keyfleet run "),
        "{a:?}"
    );
    assert_eq!(a.versions[0], template(before, "lt-0000000a").versions[0]);

    let b = template(&after, "lt-0000000b");
    assert_eq!(b.versions.len(), 3, "{b:?}");
    assert_eq!(b.versions[2].key_ids, [OTHER, NEW], "made from version 1");
    assert_eq!(
        b.default_version, 2,
        "version 1 was not the default: neither is its fix"
    );

    assert_eq!(
        template(&after, "lt-0000000c"),
        template(before, "lt-0000000c")
    );

    let asc_a = configuration(&after, "asc-0000000a");
    assert_eq!(asc_a.key_ids, [NEW]);
    assert_eq!(asc_a.instance_type, "S5.LARGE8", "other settings kept");
    assert_eq!(asc_a.name, "web-asg");
    assert_eq!(configuration(&after, "asc-0000000b").key_ids, [OTHER, NEW]);
    assert_eq!(
        configuration(&after, "asc-0000000c"),
        configuration(before, "asc-0000000c")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_gives_templates_and_launch_configurations_the_new_key() {
    let before = estate();
    let r = Rehearsal::start(quiet(), before.clone()).await;
    let (input, templates) = discover(&r, Some(NEW)).await;
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                &input,
                "--templates",
                &templates,
                "--retire",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("templates: 4 to change"), "{stderr}");
    assert!(stderr.contains("templates: 4 changed"), "{stderr}");
    assert_rotated(&r, &before);
    // --retire: every pair verified gone, no default template or configuration names
    // the key: it is deleted and confirmed gone.
    assert!(
        stderr.contains(&format!(
            "{LEAKED} (deploy): deleted; gone from DescribeKeyPairs"
        )),
        "{stderr}"
    );
    assert_eq!(sent(&r, Action::DeleteKeyPairs), 1);
    // The simulator's own proof: templates as asked, one version each, the key deleted
    // by a DeleteKeyPairs that succeeded.
    let closing = keyfleet::sim::closing::audit_closing(
        &before,
        &r.sim.fleet(),
        LEAKED,
        Some(NEW),
        &r.sim.journal(),
    );
    assert!(closing.is_clean(), "{:#?}", closing.violations);
    assert_eq!((closing.changed, closing.kept), (4, 0));
    assert!(closing.key_deleted);
    assert_eq!(sent(&r, Action::CreateLaunchTemplateVersion), 2);
    assert_eq!(sent(&r, Action::ModifyLaunchTemplateDefaultVersion), 1);
    assert_eq!(sent(&r, Action::ModifyLaunchConfigurationAttributes), 2);

    // Every change recorded, with the RequestIds of its writes in the journal.
    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let changes = store.template_changes(run_id).await.unwrap();
    assert_eq!(changes.len(), 4);
    assert!(
        changes
            .iter()
            .all(|c| c.state == keyfleet::states::TemplateState::Changed),
        "{changes:#?}"
    );
    let a = changes
        .iter()
        .find(|c| c.template_id == "lt-0000000a")
        .unwrap();
    assert_eq!(a.made_version, Some(2));

    // The same command again changes nothing more.
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                &input,
                "--templates",
                &templates,
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sent(&r, Action::CreateLaunchTemplateVersion), 2);
    assert_rotated(&r, &before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_rotation_target_the_leaked_key_goes_only_where_another_remains() {
    let before = estate();
    let r = Rehearsal::start(quiet(), before.clone()).await;
    let (input, templates) = discover(&r, None).await;
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                &input,
                "--templates",
                &templates,
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("templates: 2 to change"), "{stderr}");
    assert!(
        stderr.contains("kept launch_template lt-0000000a"),
        "{stderr}"
    );
    let after = r.sim.fleet();
    // Its only key: kept as it was (retire names it).
    assert_eq!(
        template(&after, "lt-0000000a"),
        template(&before, "lt-0000000a")
    );
    assert_eq!(
        configuration(&after, "asc-0000000a"),
        configuration(&before, "asc-0000000a")
    );
    let b = template(&after, "lt-0000000b");
    assert_eq!(b.versions[2].key_ids, [OTHER]);
    assert_eq!(configuration(&after, "asc-0000000b").key_ids, [OTHER]);

    // --retire after the verification: refused, naming what still hands the key out.
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                &input,
                "--templates",
                &templates,
                "--retire",
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("retire: every pair verified gone"),
        "{stderr}"
    );
    assert!(stderr.contains("NOT retired"), "{stderr}");
    assert!(
        stderr.contains("launch template lt-0000000a (web) default version 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("launch configuration asc-0000000a"),
        "{stderr}"
    );
    assert_eq!(sent(&r, Action::DeleteKeyPairs), 0);
    let closing = keyfleet::sim::closing::audit_closing(
        &before,
        &r.sim.fleet(),
        LEAKED,
        None,
        &r.sim.journal(),
    );
    assert!(closing.is_clean(), "{:#?}", closing.violations);
    assert_eq!((closing.changed, closing.kept), (2, 2));
    assert!(!closing.key_deleted);
    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let keys = vec![LEAKED.to_string()];
    let recorded = store.retirements_for(run_id, &keys, 0).await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert!(!recorded[0].retired && recorded[0].result.contains("lt-0000000a"));
}

/// Every reply of a write lost after it was applied (`drop_after`), then the run
/// resumed: no template gets a second version, every change ends where it should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_reply_was_lost_is_found_not_made_again() {
    let before = estate();
    let config = SimConfig {
        faults: Faults {
            drop_after: 0.3,
            ..Faults::default()
        },
        seed: 7,
        ..quiet()
    };
    let r = Rehearsal::start(config, before.clone()).await;
    let (input, templates) = discover(&r, Some(NEW)).await;
    let (code, _, stderr) = r
        .run(
            &[
                "run",
                &input,
                "--templates",
                &templates,
                "--progress",
                "none",
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_rotated(&r, &before);
}

/// A loopback proxy in front of the simulator that forwards everything, except that a
/// connection which carried a request for `hold` never gets its reply: the request is
/// applied, its answer never arrives (as when keyfleet is killed before reading it).
async fn holding_proxy(target: std::net::SocketAddr, hold: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let seen = held.clone();
                let upstream = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if String::from_utf8_lossy(&buf[..n]).contains(hold) {
                            seen.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 || held.load(std::sync::atomic::Ordering::SeqCst) {
                        // Hold the connection open, never answering.
                        std::future::pending::<()>().await;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                upstream.abort();
            });
        }
    });
    format!("http://{addr}")
}

/// kill -9 while both CreateLaunchTemplateVersion requests are applied and unanswered:
/// the same command again finds the versions they made (by their description) and
/// makes no second one; the default moves to the new version; the lost attempts are
/// recorded as such, their jobs replaced by looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_new_version_is_unanswered_makes_no_second_version() {
    let before = estate();
    let r = Rehearsal::start(quiet(), before.clone()).await;
    let (input, templates) = discover(&r, Some(NEW)).await;
    let proxy = holding_proxy(r.sim.local_addr(), "CreateLaunchTemplateVersion").await;
    let args = [
        "run",
        &input,
        "--templates",
        &templates,
        "--progress",
        "none",
    ];
    let mut child = r
        .command_at(&proxy, &args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let applied = || {
        r.sim
            .journal()
            .iter()
            .filter(|e| e.action == Action::CreateLaunchTemplateVersion.name() && e.applied)
            .count()
    };
    let deadline = std::time::Instant::now() + LIMIT;
    while applied() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the creates never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();

    let store = r.store().await;
    let run_id = store.newest_run().await.unwrap();
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE run_id = ? AND kind = 'template' AND state = 'in_flight'",
    )
    .bind(run_id)
    .fetch_one(store.pool_for_tests())
    .await
    .unwrap();
    assert_eq!(open, 2, "both creates were in flight at the kill");
    store.close().await;

    let (code, _, stderr) = r.run(&args, LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(applied(), 2, "no second version");
    assert_rotated(&r, &before);
    let store = r.store().await;
    let lost: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT state, last_error_code FROM jobs WHERE run_id = ? AND kind = 'template' ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(store.pool_for_tests())
    .await
    .unwrap();
    assert_eq!(
        lost,
        vec![("split".to_string(), Some("KeyFleet.Lost".to_string())); 2],
        "the lost creates are replaced by looks"
    );
}
