//! Closing an incident against the simulator: `discover --public-key` finds every key
//! id holding the leaked public key, the templates and launch configurations that hand
//! it out are listed in every region, and `retire` deletes a key pair only when nothing
//! holds it, naming what does.

use std::collections::BTreeSet;
use std::time::Duration;

use keyfleet::cvm::Action;
use keyfleet::executor::Api;
use keyfleet::pubkey::PublicKey;
use keyfleet::sim::{Fleet, Instance, KeyPair, LaunchConfiguration, LaunchTemplate, SimConfig};
use serde_json::json;

use crate::support::{Rehearsal, ins, sim_client};

const LIMIT: Duration = Duration::from_secs(120);
const GZ: &str = "ap-guangzhou";
const SH: &str = "ap-shanghai";
const FRA: &str = "eu-frankfurt";

/// The leaked public key (made for these tests; its private half was never kept).
const LEAKED_PUB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdxVnQ5k7mFM0oNdFTQVq3TVqYmyJ6bIj4lUq0BBXJ0";
/// The same public key under two ids of one account (one imported before the API's
/// duplicate check), and keys that are not it.
const LEAKED_A: &str = "skey-1eaked0a";
const LEAKED_B: &str = "skey-1eaked0b";
const OTHER: &str = "skey-0ther000";
const SPARE: &str = "skey-5pare000";
const IMAGED: &str = "skey-1maged00";
const TEMPLATED: &str = "skey-templ000";
const CONFIGURED: &str = "skey-c0nf1g00";

/// The template versions and launch configurations of [`estate`] that hand out the
/// leaked public key's ids.
const TEMPLATES_CSV: &str = "kind,id,name,version,region,default,keys\n\
     launch_template,lt-0000000a,web,1,ap-guangzhou,false,skey-1eaked0a\n\
     launch_template,lt-0000000b,api,1,ap-shanghai,true,skey-1eaked0b skey-0ther000\n\
     launch_configuration,asc-0000000a,web-asg,,ap-shanghai,true,skey-1eaked0a\n\
     launch_configuration,asc-0000000b,eu-asg,,eu-frankfurt,true,skey-1eaked0b\n";

fn quiet() -> SimConfig {
    SimConfig {
        rate: 0,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    }
}

/// Two regions of instances; templates and launch configurations in three (Frankfurt
/// has no instance, only a launch configuration).
fn estate() -> Fleet {
    let mut fleet = Fleet::new()
        .with_key_pair(
            KeyPair::new(LEAKED_A)
                .name("deploy")
                .public_key(format!("{LEAKED_PUB} deploy@ci")),
        )
        .with_key_pair(
            KeyPair::new(LEAKED_B)
                .name("deploy-2019")
                .public_key(LEAKED_PUB),
        )
        .with_key_pair(KeyPair::new(OTHER).name("ops"))
        .with_key_pair(KeyPair::new(SPARE).name("spare"))
        .with_key_pair(KeyPair::new(IMAGED).name("golden").image("img-0000000a"))
        .with_key_pair(KeyPair::new(TEMPLATED).name("tpl"))
        .with_key_pair(KeyPair::new(CONFIGURED).name("asg"))
        // lt-a: version 1 holds A, the default (2) does not.
        .with_template(
            LaunchTemplate::new("lt-0000000a", "web", GZ)
                .version([LEAKED_A])
                .version([OTHER])
                .default_version(2),
        )
        // lt-b: its default version hands out B beside another key.
        .with_template(LaunchTemplate::new("lt-0000000b", "api", SH).version([LEAKED_B, OTHER]))
        .with_template(LaunchTemplate::new("lt-0000000c", "batch", SH).version([TEMPLATED]))
        .with_configuration(
            LaunchConfiguration::new("asc-0000000a", "web-asg", SH).keys([LEAKED_A]),
        )
        .with_configuration(
            LaunchConfiguration::new("asc-0000000b", "eu-asg", FRA).keys([LEAKED_B]),
        )
        .with_configuration(LaunchConfiguration::new("asc-0000000c", "misc", GZ).keys([CONFIGURED]))
        .with_configuration(LaunchConfiguration::new("asc-0000000d", "ops-asg", GZ).keys([OTHER]));
    for n in 0..30 {
        let region = if n % 2 == 0 { GZ } else { SH };
        let keys = match n % 5 {
            0 => vec![LEAKED_A, OTHER],
            1 => vec![LEAKED_B],
            2 => vec![OTHER],
            _ => vec![OTHER, LEAKED_A, LEAKED_B],
        };
        fleet = fleet.with(Instance::new(ins(n), region).keys(keys));
    }
    fleet
}

fn write(r: &Rehearsal, name: &str, text: &str) -> String {
    let path = r.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn writes_sent(r: &Rehearsal) -> Vec<String> {
    r.sim
        .journal()
        .into_iter()
        .filter(|e| Action::from_name(&e.action).is_some_and(Action::is_write))
        .map(|e| e.action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_finds_every_key_id_holding_it_and_the_same_rows_as_those_ids() {
    let r = Rehearsal::start(quiet(), estate()).await;
    let key_file = write(&r, "leaked.pub", &format!("{LEAKED_PUB} alice@laptop\n"));
    let by_key = r.dir.path().join("by-key.csv");
    let by_pub = r.dir.path().join("by-pub.csv");
    let templates = r.dir.path().join("templates.csv");
    let (code, _, stderr) = r
        .run(
            &[
                "discover",
                "--public-key",
                &key_file,
                "--all-regions",
                "--output",
                by_pub.to_str().unwrap(),
                "--templates-output",
                templates.to_str().unwrap(),
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "held by 2 of the account's 7 key pairs: {LEAKED_A} (deploy), {LEAKED_B} (deploy-2019)"
        )),
        "{stderr}"
    );
    let fingerprint = PublicKey::parse(LEAKED_PUB)
        .unwrap()
        .fingerprint()
        .to_string();
    assert!(stderr.contains(&fingerprint), "{stderr}");

    let (code, _, stderr) = r
        .run(
            &[
                "discover",
                "--key",
                LEAKED_A,
                "--key",
                LEAKED_B,
                "--all-regions",
                "--output",
                by_key.to_str().unwrap(),
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    let rows = std::fs::read_to_string(&by_pub).unwrap();
    assert_eq!(rows, std::fs::read_to_string(&by_key).unwrap());
    let keys: BTreeSet<&str> = rows
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(keys, BTreeSet::from([LEAKED_A, LEAKED_B]), "none extra");
    // 30 instances: n % 5 == 2 hold neither leaked key; the others one or two pairs.
    let expected: usize = (0..30)
        .map(|n| match n % 5 {
            2 => 0,
            0 | 1 => 1,
            _ => 2,
        })
        .sum();
    assert_eq!(rows.lines().count() - 1, expected);

    // Every region scanned, Frankfurt (no instance) included; exactly the holders.
    let listed = std::fs::read_to_string(&templates).unwrap();
    assert_eq!(listed, TEMPLATES_CSV);
    assert!(stderr.contains("templates: 4 hand out"), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&templates).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner-only: {mode:o}");
    }

    // The fingerprint and an authorized_keys line with options find the same.
    let line = write(
        &r,
        "authorized_keys",
        &format!("# ops\nno-pty,from=\"10.0.0.1 10.0.0.2\" {LEAKED_PUB} x\n"),
    );
    for extra in [
        ["--fingerprint", fingerprint.as_str()],
        ["--public-key", &line],
    ] {
        let out = r.dir.path().join("again.csv");
        let mut args = vec![
            "discover",
            "--all-regions",
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(&extra);
        let (code, _, stderr) = r.run(&args, LIMIT).await;
        assert_eq!(code, 0, "{extra:?}: {stderr}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), rows, "{extra:?}");
    }
    assert!(writes_sent(&r).is_empty(), "discover only reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_nobody_holds_or_a_malformed_one_is_a_clear_usage_error() {
    let r = Rehearsal::start(quiet(), estate()).await;
    let stranger = keyfleet::sim::incident::derived_public_key("nobody").to_openssh("me");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--public-key".into(), write(&r, "stranger.pub", &stranger)],
            "no key pair of this account holds the public key SHA256:",
        ),
        (
            vec![
                "--public-key".into(),
                write(&r, "bad.pub", "ssh-ed25519 !!notbase64"),
            ],
            "body is not base64",
        ),
        (
            vec![
                "--public-key".into(),
                write(
                    &r,
                    "id_ed25519",
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n",
                ),
            ],
            "it is a private key",
        ),
        (
            vec![
                "--public-key".into(),
                r.dir.path().join("missing.pub").to_str().unwrap().into(),
            ],
            "cannot read it",
        ),
        (
            vec!["--fingerprint".into(), "MD5:12:34".into()],
            "is not a SHA256 fingerprint",
        ),
        (
            vec![
                "--key".into(),
                LEAKED_A.into(),
                "--fingerprint".into(),
                "SHA256:x".into(),
            ],
            "cannot be used with",
        ),
    ];
    for (extra, says) in cases {
        let mut args = vec!["discover", "--all-regions"];
        args.extend(extra.iter().map(String::as_str));
        let (code, stdout, stderr) = r.run(&args, LIMIT).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("AAAA\n"),
            "no key material echoed: {stderr}"
        );
        assert!(stdout.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_refuses_held_keys_naming_what_holds_them_and_deletes_nothing() {
    let r = Rehearsal::start(quiet(), estate()).await;
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &[LEAKED_A],
            &[
                "instance ins-00000000 in ap-guangzhou",
                "instance ins-00000005 in ap-shanghai",
                "launch configuration asc-0000000a (web-asg) in ap-shanghai",
                "note: launch_template lt-0000000a (web) version 1 in ap-guangzhou",
            ],
        ),
        (
            &[IMAGED],
            &["an image references it (DeleteKeyPairs: InvalidKeyPair.NotSupported)"],
        ),
        (
            &[TEMPLATED],
            &["launch template lt-0000000c (batch) default version 1 in ap-shanghai"],
        ),
        // A free key beside a held one: neither is deleted.
        (
            &[SPARE, CONFIGURED],
            &[
                "launch configuration asc-0000000c (misc) in ap-guangzhou",
                "skey-5pare000 (spare): free, but not deleted",
            ],
        ),
    ];
    for (keys, says) in cases {
        let mut args = vec!["retire"];
        for key in keys {
            args.extend(["--key", key]);
        }
        let (code, _, stderr) = r.run(&args, LIMIT).await;
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains("NOT retired"), "{stderr}");
        for said in says {
            assert!(
                stderr.contains(said),
                "{args:?} should say {said:?}:\n{stderr}"
            );
        }
        let all = r.sim.fleet().all_keys();
        for key in keys {
            assert!(all.contains(*key), "{key} was deleted");
        }
    }
    // Only the image-referenced key ever reached DeleteKeyPairs (its refusal is how an
    // image reference shows); the others were refused before any write.
    let writes = writes_sent(&r);
    assert_eq!(writes, ["DeleteKeyPairs"], "{writes:?}");

    // --ignore-templates lets a key that only a template names go.
    let (code, _, stderr) = r
        .run(&["retire", "--key", TEMPLATED, "--ignore-templates"], LIMIT)
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(!r.sim.fleet().all_keys().contains(TEMPLATED));
    let (code, _, stderr) = r.run(&["retire", "--key", "skey-12"], LIMIT).await;
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = r.run(&["retire", "--key", "skey-n0there0"], LIMIT).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_deletes_a_free_key_and_confirms_it_gone_and_dry_run_sends_no_write() {
    let r = Rehearsal::start(quiet(), estate()).await;
    let (code, _, stderr) = r.run(&["retire", "--key", SPARE, "--dry-run"], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("would be deleted (--dry-run: nothing sent)"),
        "{stderr}"
    );
    assert!(
        writes_sent(&r).is_empty(),
        "--dry-run sent {:?}",
        writes_sent(&r)
    );
    assert!(r.sim.fleet().all_keys().contains(SPARE));
    // A held key under --dry-run: refused the same way, still nothing sent.
    let (code, _, stderr) = r
        .run(&["retire", "--key", LEAKED_B, "--dry-run"], LIMIT)
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(writes_sent(&r).is_empty());

    let report = r.dir.path().join("retire.json");
    let (code, _, stderr) = r
        .run(
            &[
                "retire",
                "--key",
                SPARE,
                "--json-output",
                report.to_str().unwrap(),
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("skey-5pare000 (spare): deleted; gone from DescribeKeyPairs"),
        "{stderr}"
    );
    assert!(!r.sim.fleet().all_keys().contains(SPARE));
    let journal = r.sim.journal();
    let delete = journal
        .iter()
        .position(|e| e.action == "DeleteKeyPairs")
        .expect("a DeleteKeyPairs");
    assert_eq!(journal[delete].key_ids, [SPARE]);
    assert!(journal[delete].code.is_none());
    assert!(
        journal[delete + 1..]
            .iter()
            .any(|e| e.action == "DescribeKeyPairs" && e.code.is_none()),
        "the deletion is confirmed by listing again"
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(written["verdicts"][0]["confirmed_gone"], json!(true));
    assert_eq!(
        written["delete_request_ids"][0],
        json!(journal[delete].request_id.clone().unwrap())
    );
}

/// The simulator's incident actions, called through the client (each signed for its
/// own service on the one port): import, delete refusals, template versions, launch
/// configurations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_serves_key_pairs_templates_and_launch_configurations() {
    let r = Rehearsal::start(quiet(), estate()).await;
    let client = sim_client(&r.sim);
    let call = |action: Action, region: &'static str, body: serde_json::Value| {
        let client = client.clone();
        async move {
            Api::call(
                &client,
                &keyfleet::executor::Call {
                    action,
                    region: region.to_string(),
                    body,
                },
            )
            .await
        }
    };
    let code = |result: Result<keyfleet::executor::Reply, keyfleet::executor::Refused>| {
        result.err().map(|e| e.code).unwrap_or_default()
    };

    // ImportKeyPair: the API's duplicate checks; a new key comes back with its id
    // where the comment was.
    let stranger = keyfleet::sim::incident::derived_public_key("import").to_openssh("");
    let imported = call(
        Action::ImportKeyPair,
        GZ,
        json!({"KeyName": "new", "PublicKey": format!("{stranger} laptop")}),
    )
    .await
    .unwrap();
    let new_id = imported.response["KeyId"].as_str().unwrap().to_string();
    assert!(keyfleet::ids::is_key_id(&new_id), "{new_id}");
    let listed = call(Action::DescribeKeyPairs, GZ, json!({"KeyIds": [new_id]}))
        .await
        .unwrap();
    assert_eq!(
        listed.response["KeyPairSet"][0]["PublicKey"],
        json!(format!("{stranger} {new_id}"))
    );
    for (body, want) in [
        (
            json!({"KeyName": "again", "PublicKey": stranger}),
            "InvalidPublicKey.Duplicate",
        ),
        (
            json!({"KeyName": "new", "PublicKey": LEAKED_PUB}),
            "InvalidKeyPairName.Duplicate",
        ),
        (
            json!({"KeyName": "x", "PublicKey": "ssh-rsa nope"}),
            "InvalidPublicKey.Malformed",
        ),
        (json!({"PublicKey": LEAKED_PUB}), "MissingParameter"),
    ] {
        assert_eq!(code(call(Action::ImportKeyPair, GZ, body).await), want);
    }
    // AssociatedInstanceIds: the holders in the region asked (retire asks every region).
    let a = call(Action::DescribeKeyPairs, GZ, json!({"KeyIds": [LEAKED_A]}))
        .await
        .unwrap();
    let holders = a.response["KeyPairSet"][0]["AssociatedInstanceIds"]
        .as_array()
        .unwrap()
        .clone();
    assert!(holders.contains(&json!(ins(0))), "{holders:?}");
    assert!(
        !holders.contains(&json!(ins(5))),
        "ins(5) is in Shanghai: {holders:?}"
    );

    // DeleteKeyPairs refuses a bound key and an image-referenced one, whole.
    let refused = call(
        Action::DeleteKeyPairs,
        GZ,
        json!({"KeyIds": [SPARE, LEAKED_A]}),
    )
    .await;
    assert_eq!(code(refused), "InvalidParameterValue.KeyPairNotSupported");
    let refused = call(Action::DeleteKeyPairs, GZ, json!({"KeyIds": [IMAGED]})).await;
    assert_eq!(code(refused), "InvalidKeyPair.NotSupported");
    assert!(r.sim.fleet().all_keys().contains(SPARE));
    let too_many: Vec<String> = (0..101).map(|n| format!("skey-{n:08}")).collect();
    let refused = call(Action::DeleteKeyPairs, GZ, json!({"KeyIds": too_many})).await;
    assert_eq!(code(refused), "InvalidParameterValue.LimitExceeded");

    // Launch templates: a new version from a source keeps its other settings; the
    // default moves only when asked; at most 30 versions.
    let created = call(
        Action::CreateLaunchTemplateVersion,
        SH,
        json!({"LaunchTemplateId": "lt-0000000b", "LaunchTemplateVersion": 1,
               "LoginSettings": {"KeyIds": [OTHER]}}),
    )
    .await
    .unwrap();
    assert_eq!(created.response["LaunchTemplateVersionNumber"], json!(2));
    call(
        Action::ModifyLaunchTemplateDefaultVersion,
        SH,
        json!({"LaunchTemplateId": "lt-0000000b", "DefaultVersion": 2}),
    )
    .await
    .unwrap();
    let versions = call(
        Action::DescribeLaunchTemplateVersions,
        SH,
        json!({"LaunchTemplateId": "lt-0000000b"}),
    )
    .await
    .unwrap();
    let set = &versions.response["LaunchTemplateVersionSet"];
    assert_eq!(set[0]["IsDefaultVersion"], json!(false));
    assert_eq!(set[1]["IsDefaultVersion"], json!(true));
    assert_eq!(
        set[1]["LaunchTemplateVersionData"]["LoginSettings"]["KeyIds"],
        json!([OTHER])
    );
    assert_eq!(
        set[1]["LaunchTemplateVersionData"]["InstanceType"],
        set[0]["LaunchTemplateVersionData"]["InstanceType"]
    );
    assert_eq!(
        code(
            call(
                Action::DescribeLaunchTemplateVersions,
                GZ,
                json!({"LaunchTemplateId": "lt-0000000b"})
            )
            .await
        ),
        "InvalidParameterValue.LaunchTemplateIdNotExisted",
        "a template lives in its region"
    );
    for _ in 2..30 {
        call(
            Action::CreateLaunchTemplateVersion,
            SH,
            json!({"LaunchTemplateId": "lt-0000000b"}),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        code(
            call(
                Action::CreateLaunchTemplateVersion,
                SH,
                json!({"LaunchTemplateId": "lt-0000000b"})
            )
            .await
        ),
        "LimitExceeded.LaunchTemplateVersionQuota"
    );

    // Auto Scaling: its own service and version, LoginSettings replaced whole.
    call(
        Action::ModifyLaunchConfigurationAttributes,
        SH,
        json!({"LaunchConfigurationId": "asc-0000000a", "LoginSettings": {"KeyIds": [OTHER]}}),
    )
    .await
    .unwrap();
    let lcs = call(Action::DescribeLaunchConfigurations, SH, json!({}))
        .await
        .unwrap();
    assert_eq!(
        lcs.response["LaunchConfigurationSet"][0]["LoginSettings"]["KeyIds"],
        json!([OTHER])
    );
    assert_eq!(
        lcs.response["LaunchConfigurationSet"][0]["InstanceType"],
        json!("S5.MEDIUM2")
    );
    let as_entries: Vec<_> = r
        .sim
        .journal()
        .into_iter()
        .filter(|e| e.action.contains("LaunchConfiguration"))
        .collect();
    assert!(
        as_entries.iter().all(|e| e.code.is_none()),
        "{as_entries:?}"
    );
    // A CVM action signed for `as` does not exist there; an `as` action under CVM's
    // version neither.
    let wrong = client
        .call_service(
            keyfleet::cvm::Service::As,
            "DescribeInstances",
            GZ,
            &json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), "InvalidAction");
    let fleet = r.sim.fleet();
    assert_eq!(fleet.launch_templates[1].versions.len(), 30);
    assert_eq!(fleet.launch_configurations[0].key_ids, [OTHER]);
}

/// With `{service}` in the endpoint each service's calls go to its own host (here
/// resolved onto the one simulator), each signed for its own service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_template_sends_each_service_to_its_own_host() {
    let r = Rehearsal::start(quiet(), estate()).await;
    let port = r.sim.local_addr().port();
    let template = format!("http://{{service}}.{{region}}.sim.test:{port}");
    let mut command = r.command_at(
        &template,
        &[
            "--resolve",
            "*.sim.test=127.0.0.1",
            "discover",
            "--key",
            LEAKED_B,
            "--regions",
            "ap-guangzhou,ap-shanghai,eu-frankfurt",
        ],
    );
    let output = tokio::time::timeout(LIMIT, command.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("templates: 2 hand out"), "{stderr}");
    let hosts: BTreeSet<(String, String)> = r
        .sim
        .journal()
        .into_iter()
        .map(|e| (e.action, e.host))
        .collect();
    assert!(hosts.contains(&(
        "DescribeLaunchConfigurations".into(),
        format!("as.eu-frankfurt.sim.test:{port}")
    )));
    assert!(hosts.contains(&(
        "DescribeLaunchTemplates".into(),
        format!("cvm.eu-frankfurt.sim.test:{port}")
    )));
    assert!(
        hosts.iter().all(|(action, host)| host.starts_with(&format!(
            "{}.",
            Action::from_name(action).unwrap().service()
        ))),
        "{hosts:?}"
    );
    assert!(r.sim.journal().iter().all(|e| e.code.is_none()));
}

/// At the documented limits, with seeded transient faults (lost replies among them),
/// the public key, the templates and the retirement come out exactly as without them,
/// and no action of either service exceeds its limit at its endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_limits_change_nothing_found_or_retired() {
    let config = SimConfig {
        faults: keyfleet::sim::Faults {
            mutex: 0.03,
            in_progress: 0.0,
            internal: 0.03,
            drop_before: 0.02,
            drop_after: 0.02,
        },
        seed: 22,
        settle_after: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let r = Rehearsal::start(config, estate()).await;
    let key_file = write(&r, "leaked.pub", LEAKED_PUB);
    let templates = r.dir.path().join("templates.csv");
    let found = r.dir.path().join("found.csv");
    let (code, _, stderr) = r
        .run(
            &[
                "discover",
                "--public-key",
                &key_file,
                "--all-regions",
                "--output",
                found.to_str().unwrap(),
                "--templates-output",
                templates.to_str().unwrap(),
            ],
            LIMIT,
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&templates).unwrap(), TEMPLATES_CSV);
    // 6 instances of each n % 5: 1, 1, 0, 2 and 2 pairs.
    let rows = std::fs::read_to_string(&found).unwrap();
    assert_eq!(rows.lines().count(), 1 + 36, "{rows}");
    let (code, _, stderr) = r.run(&["retire", "--key", SPARE], LIMIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(!r.sim.fleet().all_keys().contains(SPARE));
    let stats = r.sim.stats();
    let faulted = r
        .sim
        .journal()
        .iter()
        .filter(|e| {
            e.dropped
                || e.code
                    .as_deref()
                    .is_some_and(|c| c != "RequestLimitExceeded")
        })
        .count();
    assert!(faulted > 0, "the seed faults some requests: {stats:?}");
    for (host, by_action) in &stats.max_in_any_second_by_host {
        for (action, max) in by_action {
            let limit = u64::from(Action::from_name(action).unwrap().rate_limit());
            assert!(
                *max <= limit,
                "{host} {action}: {max} in one second, limit {limit}"
            );
        }
    }
}
