//! Abuse: slow bodies, connection caps, floods of unsigned posts, peak memory.

use super::*;

/// Opens a connection, sends `bytes`, and returns how long, from connecting, the server
/// took to close it (`None`: still open after `limit`). The server's timeouts start
/// after it accepts, so the time is at least the timeout.
async fn closed_after(
    addr: std::net::SocketAddr,
    bytes: &'static [u8],
    limit: Duration,
) -> Option<Duration> {
    closed_after_sending(addr, bytes, limit)
        .await
        .map(|(from_connect, _)| from_connect)
}

/// The same, and also how long from the bytes having been written.
async fn closed_after_sending(
    addr: std::net::SocketAddr,
    bytes: &'static [u8],
    limit: Duration,
) -> Option<(Duration, Duration)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connecting = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(bytes).await.ok()?;
    let sent = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, closed).await.ok()?;
    Some((connecting.elapsed(), sent.elapsed()))
}

/// Half a request head: never finished.
const HALF_HEADER: &[u8] = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty";

#[tokio::test]
async fn a_slow_body_is_cut_off_by_the_body_timeout() {
    let config = SimConfig {
        body_timeout: Duration::from_millis(300),
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"Instan";
    let took = closed_after(sim.local_addr(), head, DEADLINE)
        .await
        .expect("closed by the server");
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert_eq!(sim.stats().body_timeouts, 1);
    assert!(
        sim.journal().is_empty(),
        "a request never read is not journaled"
    );
}

#[tokio::test]
async fn the_connection_cap_makes_new_connections_wait() {
    let timeout = Duration::from_millis(300);
    let config = SimConfig {
        header_timeout: timeout,
        max_connections: 2,
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let addr = sim.local_addr();
    let opened = Instant::now();
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(closed_after(addr, HALF_HEADER, DEADLINE)))
        .collect();
    // Both are accepted (the cap) before the honest request is sent.
    let deadline = Instant::now() + DEADLINE;
    while sim.stats().connections < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow connections were not accepted"
        );
        tokio::task::yield_now().await;
    }
    Call::new("DescribeInstances", json!({}))
        .reply(&sim)
        .await
        .assert_success();
    // It waited for a slot: the slow ones had to time out first.
    assert!(opened.elapsed() >= timeout, "{:?}", opened.elapsed());
    for task in slow {
        let took = task.await.unwrap().expect("closed by the server");
        assert!(took >= timeout - Duration::from_millis(20), "{took:?}");
    }
    let stats = sim.stats();
    assert_eq!(stats.max_open_connections, 2, "{stats:?}");
    assert_eq!(stats.connections, 3);
    assert!(stats.header_timeouts >= 2, "{stats:?}");
}

/// A signed request body of about `bytes` bytes of instance ids.
fn big_body(bytes: usize) -> String {
    let ids: Vec<String> = (0..bytes / 15).map(support::ins).collect();
    json!({ "InstanceIds": ids, "KeyIds": ["skey-0000000a"] }).to_string()
}

#[tokio::test]
async fn the_journal_keeps_its_capacity_under_a_flood_of_unsigned_posts() {
    let config = SimConfig {
        journal_capacity: 10,
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    let body = big_body(700 * 1024);
    assert!(body.len() >= 700 * 1024);
    for _ in 0..5 {
        Call::new("DescribeInstances", json!({}))
            .reply(&sim)
            .await
            .assert_success();
    }
    let mut unsigned = Call::new(DISASSOCIATE, json!({}));
    unsigned.body = body;
    unsigned.auth = Auth::Missing;
    for _ in 0..30 {
        unsigned
            .reply(&sim)
            .await
            .assert_error("AuthFailure.InvalidAuthorization");
    }
    let journal = sim.journal();
    assert_eq!(journal.len(), 10);
    assert!(
        journal.iter().all(|e| e.instance_ids.is_empty()
            && e.code.as_deref() == Some("AuthFailure.InvalidAuthorization")),
        "the newest ten, none holding the body's ids"
    );
    let stats = sim.stats();
    assert_eq!(stats.journal_dropped, 25);
    assert_eq!(stats.protocol_failures, 30);
    assert_eq!(
        stats.requests[DISASSOCIATE]["AuthFailure.InvalidAuthorization"],
        30
    );
    assert_eq!(stats.requests["DescribeInstances"]["Success"], 5);
}

#[tokio::test]
async fn journal_pages_return_every_retained_entry_once() {
    let config = SimConfig {
        journal_capacity: 40,
        ..quiet()
    };
    let sim = start(config, small_fleet()).await;
    for n in 0..55 {
        let mut call = Call::unbind(&["ins-00000001"], &["skey-0000000c"]);
        call.body =
            json!({ "InstanceIds": [support::ins(n)], "KeyIds": ["skey-0000000c"] }).to_string();
        call.reply(&sim).await;
    }
    let http = reqwest::Client::new();
    let mut after = 0;
    let mut paged = Vec::new();
    let mut pages = 0;
    loop {
        let url = format!("{}/_sim/journal?after={after}&limit=7", sim.endpoint());
        let page: sim::JournalPage = http.get(url).send().await.unwrap().json().await.unwrap();
        assert!(page.entries.len() <= 7);
        assert_eq!(page.first_retained, 16, "15 dropped");
        paged.extend(page.entries);
        after = page.next_after;
        pages += 1;
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 6);
    assert_eq!(paged, sim.journal());
    let ids: BTreeSet<String> = paged.iter().map(|e| e.instance_ids[0].clone()).collect();
    assert_eq!(ids.len(), 40, "each retained entry once");
    assert!(ids.contains(&support::ins(54)) && !ids.contains(&support::ins(14)));
    // A limit above the cap is capped; junk is refused with a reason.
    let capped = sim.journal_page(0, usize::MAX);
    assert_eq!(capped.entries.len(), 40);
    let refused = http
        .get(format!("{}/_sim/journal?after=x", sim.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
}

/// `VmHWM` (peak resident memory) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Peak memory `keyfleet sim` may reach under the abuse below (README, "The simulator").
const ABUSE_PEAK_RSS_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfleet_sim_survives_half_headers_and_big_unsigned_posts() {
    let timeout = Duration::from_millis(500);
    let mut child = Child(
        support::Cmd::bare()
            .into_std()
            .args([
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--generate",
                "10",
                "--seed",
                "1",
            ])
            .args(["--header-timeout", "500ms", "--max-connections", "2500"])
            .args(["--journal-capacity", "1000"])
            .env_remove("KEYFLEET_SIM_SECRET_KEY")
            .env_remove("KEYFLEET_SIM_SECRET_ID")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keyfleet sim"),
    );
    let pid = child.0.id();
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let printed: Value = serde_json::from_str(&line).expect("one JSON line");
    let endpoint = printed["endpoint"].as_str().unwrap().to_string();
    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let before = peak_rss_kib(pid);

    // 2,000 connections, each sending half a header: every one closed by the server,
    // none before its header timeout, none long after.
    let tasks: Vec<_> = (0..2000)
        .map(|_| tokio::spawn(closed_after_sending(addr, HALF_HEADER, DEADLINE)))
        .collect();
    let mut longest = Duration::ZERO;
    for task in tasks {
        let (from_connect, from_sent) = task
            .await
            .unwrap()
            .expect("closed by the server within the deadline");
        assert!(
            from_connect >= timeout - Duration::from_millis(20),
            "{from_connect:?}"
        );
        longest = longest.max(from_sent);
    }
    assert!(longest < timeout + Duration::from_secs(3), "{longest:?}");

    // 60 unsigned 700 KB POSTs, 6 at a time: counted, their bodies not kept.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = big_body(700 * 1024);
    for _ in 0..10 {
        let sends: Vec<_> = (0..6)
            .map(|_| {
                http.post(format!("{endpoint}/"))
                    .header("Content-Type", "application/json")
                    .header("X-TC-Action", DISASSOCIATE)
                    .body(body.clone())
                    .send()
            })
            .collect();
        for send in sends {
            let reply: Value = send.await.unwrap().json().await.unwrap();
            assert_eq!(
                reply["Response"]["Error"]["Code"],
                "AuthFailure.InvalidAuthorization"
            );
        }
    }
    let stats: Value = http
        .get(format!("{endpoint}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["protocol_failures"], 60, "{stats}");
    assert!(
        stats["header_timeouts"].as_u64().unwrap() >= 2000,
        "{stats}"
    );
    assert!(
        stats["max_open_connections"].as_u64().unwrap() <= 2500,
        "{stats}"
    );
    let page: Value = http
        .get(format!("{endpoint}/_sim/journal?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 60);
    assert!(entries.iter().all(|e| e["instance_ids"] == json!([])));
    let peak = peak_rss_kib(pid);
    eprintln!("keyfleet sim peak RSS: {before} KiB at start, {peak} KiB after the abuse");
    assert!(
        peak < ABUSE_PEAK_RSS_KIB,
        "peak RSS {peak} KiB, over {ABUSE_PEAK_RSS_KIB} KiB"
    );
}
