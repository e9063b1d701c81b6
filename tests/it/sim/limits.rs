//! Rate limits: a sliding window per action and access endpoint, changed while running.

use super::*;

#[tokio::test]
async fn the_rate_limit_is_a_sliding_window_per_action_and_host() {
    let config = SimConfig { rate: 3, ..quiet() };
    let sim = start(config, small_fleet()).await;
    let describe = Call::new("DescribeKeyPairs", json!({}));
    let started = Instant::now();
    let mut codes = Vec::new();
    // When the last admitted request's reply arrived: every admission came before it.
    let mut last_admitted = started;
    for _ in 0..5 {
        let code = describe.reply(&sim).await.code().map(str::to_string);
        if code.is_none() {
            last_admitted = Instant::now();
        }
        codes.push(code);
    }
    let burst = started.elapsed();
    if burst < Duration::from_millis(900) {
        let limited = Some("RequestLimitExceeded".to_string());
        assert_eq!(codes, [None, None, None, limited.clone(), limited]);
        // Another action has its own allowance; a throttled request changes nothing.
        Call::unbind(&["ins-00000001"], &["skey-0000000a"])
            .reply(&sim)
            .await
            .assert_success();
        let throttled_unbind = Call::unbind(&["ins-00000002"], &["skey-0000000a"]);
        for _ in 0..3 {
            let _ = throttled_unbind.reply(&sim).await;
        }
        let stats = sim.stats();
        assert!(stats.throttled >= 2);
        assert_eq!(stats.max_in_any_second, 3);
        assert_eq!(stats.max_in_any_second_by_action["DescribeKeyPairs"], 3);
    }
    // Refused requests did not use up the allowance: a second after the last admitted
    // request the window has room again (however slowly a loaded machine sent the burst).
    tokio::time::sleep_until(last_admitted + Duration::from_millis(1100)).await;
    describe.reply(&sim).await.assert_success();
    let stats = sim.stats();
    assert!(stats.max_in_any_second <= 3, "{stats:?}");
    assert_eq!(
        stats.requests["DescribeKeyPairs"]
            .get("RequestLimitExceeded")
            .copied()
            .unwrap_or(0)
            + stats.requests["DescribeKeyPairs"]["Success"],
        6
    );
}

#[tokio::test]
async fn latency_delays_the_reply() {
    let config = SimConfig {
        latency: (Duration::from_millis(150), Duration::from_millis(150)),
        jitter: Duration::from_millis(20),
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let started = Instant::now();
    Call::new("DescribeInstances", json!({}))
        .reply(&sim)
        .await
        .assert_success();
    assert!(started.elapsed() >= Duration::from_millis(150));
}

/// `n` DescribeInstances requests with `Host: host`, sent at once; their codes.
async fn burst(sim: &SimHandle, host: &str, n: usize) -> Vec<Option<String>> {
    let mut call = Call::new("DescribeKeyPairs", json!({}));
    call.host = Some(host.to_string());
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(call.reply(sim).await.code().map(str::to_string));
    }
    codes
}

fn admitted(codes: &[Option<String>]) -> usize {
    codes.iter().filter(|c| c.is_none()).count()
}

#[tokio::test]
async fn each_host_has_its_own_limit() {
    let config = SimConfig {
        rate: 10,
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let started = Instant::now();
    let a = burst(&sim, "cvm.ap-guangzhou.sim.test", 13).await;
    let b = burst(&sim, "CVM.ap-shanghai.sim.test", 13).await;
    // Only a burst inside one window shows the limit exactly (a loaded machine may
    // spread it over more).
    let one_window = started.elapsed() < Duration::from_millis(900);
    let stats = sim.stats();
    let by_host = &stats.max_in_any_second_by_host;
    assert_eq!(by_host.len(), 2, "the Host is lower-cased: {by_host:?}");
    assert!(stats.max_in_any_second <= 10, "{stats:?}");
    if one_window {
        assert_eq!(admitted(&a), 10, "{a:?}");
        assert_eq!(admitted(&b), 10, "{b:?}");
        assert_eq!(by_host["cvm.ap-guangzhou.sim.test"]["DescribeKeyPairs"], 10);
        assert_eq!(by_host["cvm.ap-shanghai.sim.test"]["DescribeKeyPairs"], 10);
        assert_eq!(stats.max_in_any_second_by_action["DescribeKeyPairs"], 20);
        assert_eq!(stats.max_in_any_second, 10);
    }
    let journal = sim.journal();
    assert_eq!(journal[0].host, "cvm.ap-guangzhou.sim.test");
}

#[tokio::test]
async fn the_rate_can_change_while_running() {
    let config = SimConfig { rate: 2, ..quiet() };
    let sim = start(config, small_fleet()).await;
    let host = "cvm.sim.test";
    let http = reqwest::Client::new();
    let set = |rate: Value| {
        let http = http.clone();
        let url = format!("{}/_sim/rate", sim.endpoint());
        async move {
            let response = http.post(url).json(&rate).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    // Each phase is one burst in a fresh window (the previous burst aged out).
    let mut phases = Vec::new();
    for rate in [5, 1, 8] {
        let (status, reply) = set(json!({ "rate": rate })).await;
        assert_eq!((status, reply), (200, json!({ "rate": rate })));
        let started = Instant::now();
        let codes = burst(&sim, host, 10).await;
        if started.elapsed() < Duration::from_millis(900) {
            phases.push((rate, admitted(&codes)));
        }
        // Every admission of this burst ages out of the window before the next.
        tokio::time::sleep(Duration::from_millis(1050)).await;
    }
    for (rate, admitted) in &phases {
        assert_eq!(*admitted, *rate as usize, "{phases:?}");
    }
    // The handle does the same; 0 is unlimited.
    sim.set_rate(0);
    assert_eq!(admitted(&burst(&sim, host, 12).await), 12);
    let (status, reply) = set(json!({ "rate": "fast" })).await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().unwrap().contains("rate"), "{reply}");
    let got: Value = http
        .get(format!("{}/_sim/rate", sim.endpoint()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, json!({ "rate": 0 }));
}
