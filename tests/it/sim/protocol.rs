//! Signatures and protocol: each signing and validation failure with its code, in the API's order.

use super::*;

#[tokio::test]
async fn each_signature_failure_has_its_code() {
    let sim = start(quiet(), small_fleet()).await;
    let good = Call::unbind(&["ins-00000001"], &["skey-0000000a"]);
    let before = sim.fleet().bindings();

    let mut unknown_id = good.clone();
    unknown_id.secret_id = "AKIDsomebodyelse".to_string();
    unknown_id
        .reply(&sim)
        .await
        .assert_error("AuthFailure.SecretIdNotFound");

    let mut wrong_key = good.clone();
    wrong_key.secret_key = "not-the-key".to_string();
    wrong_key
        .reply(&sim)
        .await
        .assert_error("AuthFailure.SignatureFailure");

    let mut tampered = good.clone();
    tampered.tampered_body =
        Some(json!({"InstanceIds": ["ins-00000002"], "KeyIds": ["skey-0000000a"]}).to_string());
    tampered
        .reply(&sim)
        .await
        .assert_error("AuthFailure.SignatureFailure");

    let mut missing = good.clone();
    missing.auth = Auth::Missing;
    missing
        .reply(&sim)
        .await
        .assert_error("AuthFailure.InvalidAuthorization");

    let mut malformed = good.clone();
    malformed.auth = Auth::Literal("Basic dXNlcjpwYXNz".to_string());
    malformed
        .reply(&sim)
        .await
        .assert_error("AuthFailure.InvalidAuthorization");

    let mut old = good.clone();
    old.timestamp_offset = -301;
    old.reply(&sim)
        .await
        .assert_error("AuthFailure.SignatureExpire");
    let mut future = good.clone();
    future.timestamp_offset = 400;
    future
        .reply(&sim)
        .await
        .assert_error("AuthFailure.SignatureExpire");

    assert_eq!(
        sim.fleet().bindings(),
        before,
        "no refused request changed anything"
    );

    // Within the allowed skew the same request goes through.
    let mut skewed = good.clone();
    skewed.timestamp_offset = -250;
    skewed.reply(&sim).await.assert_success();
}

#[tokio::test]
async fn accepts_host_forms_and_any_signed_headers() {
    let sim = start(quiet(), small_fleet()).await;
    let endpoint = sim.endpoint();
    // The Python SDK: Host with the port, content-type;host signed.
    Call::unbind(&["ins-00000001"], &["skey-0000000a"])
        .reply(&sim)
        .await
        .assert_success();
    // tccli --endpoint: the literal URL as Host.
    let mut tccli = Call::unbind(&["ins-00000002"], &["skey-0000000a"]);
    tccli.host = Some(endpoint.clone());
    tccli.reply(&sim).await.assert_success();
    // More signed headers.
    let mut more = Call::unbind(&["ins-00000003"], &["skey-0000000b"]);
    more.extra_signed = vec!["x-tc-action", "x-tc-region", "x-tc-timestamp"];
    more.reply(&sim).await.assert_success();
}

#[tokio::test]
async fn protocol_errors() {
    let sim = start(quiet(), small_fleet()).await;
    let good = Call::unbind(&["ins-00000001"], &["skey-0000000a"]);

    let mut version = good.clone();
    version.version = "2017-03-13".to_string();
    version.reply(&sim).await.assert_error("NoSuchVersion");

    let mut action = good.clone();
    action.action = Some("RebootInstances".to_string());
    action.reply(&sim).await.assert_error("InvalidAction");

    let mut no_action = good.clone();
    no_action.action = None;
    let reply = no_action.reply(&sim).await;
    reply.assert_error("MissingParameter");
    assert!(reply.message().contains("Action"), "{}", reply.message());

    let mut no_region = good.clone();
    no_region.region = None;
    no_region.reply(&sim).await.assert_error("MissingParameter");

    Call::new(
        DISASSOCIATE,
        json!({"InstanceIds": ["ins-00000001"], "KeyIds": ["skey-0000000a"], "DryRun": true}),
    )
    .reply(&sim)
    .await
    .assert_error("UnknownParameter");

    Call::new(
        DISASSOCIATE,
        json!({"InstanceIds": "ins-00000001", "KeyIds": ["skey-0000000a"]}),
    )
    .reply(&sim)
    .await
    .assert_error("InvalidParameter");

    let mut not_json = good.clone();
    not_json.body = "InstanceIds=ins-00000001".to_string();
    not_json.reply(&sim).await.assert_error("InvalidParameter");

    assert_eq!(sim.fleet(), {
        let mut f = small_fleet();
        f.keys = f.all_keys().into_iter().collect();
        f
    });
}

#[tokio::test]
async fn validation_errors_in_the_apis_order() {
    let sim = start(quiet(), small_fleet()).await;
    let many_instances: Vec<String> = (0..101).map(|n| format!("ins-{n:08}")).collect();
    let many_keys: Vec<String> = (0..101).map(|n| format!("skey-{n:08}")).collect();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"KeyIds": ["skey-0000000a"]}), "MissingParameter"),
        (json!({"InstanceIds": ["ins-00000001"]}), "MissingParameter"),
        (
            json!({"InstanceIds": [], "KeyIds": ["skey-0000000a"]}),
            "MissingParameter",
        ),
        // Missing beats too many.
        (json!({"InstanceIds": many_instances}), "MissingParameter"),
        (
            json!({"InstanceIds": many_instances, "KeyIds": ["skey-0000000a"]}),
            "InvalidParameterValue.LimitExceeded",
        ),
        // Too many beats malformed.
        (
            json!({"InstanceIds": ["ins-1122"], "KeyIds": many_keys}),
            "InvalidParameterValue.LimitExceeded",
        ),
        (
            json!({"InstanceIds": ["ins-1122"], "KeyIds": ["skey-0000000a"]}),
            "InvalidInstanceId.Malformed",
        ),
        // Malformed beats not found, whichever list it is in.
        (
            json!({"InstanceIds": ["ins-77777777"], "KeyIds": ["skey-1122"]}),
            "InvalidKeyPairId.Malformed",
        ),
        (
            json!({"InstanceIds": ["ins-00000001", "ins-77777777"], "KeyIds": ["skey-0000000a"]}),
            "InvalidInstanceId.NotFound",
        ),
        // An instance of another region is not found in this one.
        (
            json!({"InstanceIds": ["ins-00000009"], "KeyIds": ["skey-0000000a"]}),
            "InvalidInstanceId.NotFound",
        ),
        (
            json!({"InstanceIds": ["ins-00000001"], "KeyIds": ["skey-77777777"]}),
            "InvalidKeyPairId.NotFound",
        ),
    ];
    for (body, code) in cases {
        let reply = Call::new(DISASSOCIATE, body.clone()).reply(&sim).await;
        assert_eq!(reply.code(), Some(code), "{body}");
        reply.assert_envelope();
    }
    let reply = Call::unbind(&["ins-1122"], &["skey-0000000a"])
        .reply(&sim)
        .await;
    assert_eq!(
        reply.message(),
        "Invalid instance ID. The specified instance ID has an invalid format. For example, \
         ins-1122 has an invalid ID length."
    );
    // Exactly 100 is allowed (and unknown ids then are the problem).
    let hundred: Vec<String> = (0..100).map(|n| format!("ins-{n:08}")).collect();
    Call::new(
        DISASSOCIATE,
        json!({"InstanceIds": hundred, "KeyIds": ["skey-0000000a"]}),
    )
    .reply(&sim)
    .await
    .assert_error("InvalidInstanceId.NotFound");
    // The Shanghai instance is found with the Shanghai region.
    Call::unbind(&["ins-00000009"], &["skey-0000000a"])
        .region(SH)
        .reply(&sim)
        .await
        .assert_success();
}

#[tokio::test]
async fn get_with_flattened_query_parameters() {
    let fleet = small_fleet().with(
        Instance::new("ins-0000000r", GZ)
            .state(InstanceState::Running)
            .keys(["skey-0000000a"]),
    );
    let sim = start(quiet(), fleet).await;
    Call::get(
        DISASSOCIATE,
        "InstanceIds.0=ins-00000001&InstanceIds.1=ins-0000000r&KeyIds.0=skey-0000000a&ForceStop=true",
    )
    .reply(&sim)
    .await
    .assert_success();
    let fleet = sim.fleet();
    assert_eq!(
        fleet.instance("ins-00000001").unwrap().key_ids,
        ["skey-0000000b"]
    );
    assert!(fleet.instance("ins-0000000r").unwrap().key_ids.is_empty());

    // Common parameters may ride in the query too, as in the documented GET example.
    let mut in_query = Call::get(
        "",
        "Action=DescribeInstances&Version=2017-03-12&Region=ap-guangzhou&Offset=1&Limit=2",
    );
    in_query.action = None;
    in_query.region = None;
    let reply = in_query.reply(&sim).await;
    reply.assert_success();
    assert_eq!(reply.json["Response"]["TotalCount"], json!(4));
    assert_eq!(
        reply.json["Response"]["InstanceSet"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    Call::get(
        DISASSOCIATE,
        "InstanceIds.0=ins-00000002&KeyIds.0=skey-1122",
    )
    .reply(&sim)
    .await
    .assert_error("InvalidKeyPairId.Malformed");
}

#[tokio::test]
async fn describe_instances_and_key_pairs() {
    let sim = start(quiet(), small_fleet()).await;
    let reply = Call::new(
        "DescribeInstances",
        json!({"InstanceIds": ["ins-00000002", "ins-77777777", "ins-00000009"]}),
    )
    .reply(&sim)
    .await;
    reply.assert_success();
    // Unknown and other-region ids are left out, like the real API.
    assert_eq!(reply.json["Response"]["TotalCount"], json!(1));
    let item = &reply.json["Response"]["InstanceSet"][0];
    assert_eq!(item["InstanceId"], "ins-00000002");
    assert_eq!(item["InstanceState"], "STOPPED");
    assert_eq!(item["OsName"], "TencentOS Server 3.1 (TK4)");
    assert_eq!(item["LoginSettings"]["KeyIds"], json!(["skey-0000000a"]));

    let mut seen = Vec::new();
    for offset in [0, 2] {
        let page = Call::new("DescribeInstances", json!({"Offset": offset, "Limit": 2}))
            .reply(&sim)
            .await;
        assert_eq!(page.json["Response"]["TotalCount"], json!(3));
        for item in page.json["Response"]["InstanceSet"].as_array().unwrap() {
            seen.push(item["InstanceId"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["ins-00000001", "ins-00000002", "ins-00000003"]);
    Call::new("DescribeInstances", json!({"Limit": 101}))
        .reply(&sim)
        .await
        .assert_error("InvalidParameterValue");
    Call::new("DescribeInstances", json!({"InstanceIds": ["ins-12"]}))
        .reply(&sim)
        .await
        .assert_error("InvalidInstanceId.Malformed");

    let keys = Call::new(
        "DescribeKeyPairs",
        json!({"KeyIds": ["skey-0000000a", "skey-0000000c"]}),
    )
    .reply(&sim)
    .await;
    keys.assert_success();
    let set = &keys.json["Response"]["KeyPairSet"];
    assert_eq!(set[0]["KeyId"], "skey-0000000a");
    assert_eq!(
        set[0]["AssociatedInstanceIds"],
        json!(["ins-00000001", "ins-00000002"])
    );
    assert_eq!(set[1]["AssociatedInstanceIds"], json!([]));
    Call::new("DescribeKeyPairs", json!({"KeyIds": ["skey-77777777"]}))
        .reply(&sim)
        .await
        .assert_error("InvalidKeyPairId.NotFound");
    let all = Call::new("DescribeKeyPairs", json!({})).reply(&sim).await;
    assert_eq!(all.json["Response"]["TotalCount"], json!(3));
}
