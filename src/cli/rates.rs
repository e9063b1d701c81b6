//! The achieved rate per API action and access endpoint, as `status` and the run
//! summary show it (the numbers: `Store::achieved_rates`).

use keyfleet::display::escape;
use keyfleet::executor::Summary;
use keyfleet::store::Store;
use keyfleet::store::rates::EndpointRate;

/// The run summary's part: the rates of the attempts this execution sent, on stderr.
/// A failed read is a note, not a failed run (the run's outcome is already recorded).
pub(crate) async fn print_for_execution(store: &Store, summary: &Summary) {
    let since = keyfleet::store::now_ms() - summary.elapsed.as_millis() as i64;
    match store.achieved_rates(summary.run_id, Some(since)).await {
        Ok(rates) if rates.is_empty() => {}
        Ok(rates) => {
            crate::note!("  rates:");
            for line in lines(&rates, "    ") {
                crate::note!("{line}");
            }
        }
        Err(error) => crate::note!("  rates: could not be read: {error}"),
    }
}

/// One line per (action, endpoint), each starting with `indent`:
/// `DisassociateInstancesKeyPairs at https://cvm.ap-guangzhou.../: 250 requests,
/// 02:10:00.125..02:10:25.750 UTC, 9.74/s, throttled RequestLimitExceeded 3`.
pub(crate) fn lines(rates: &[EndpointRate], indent: &str) -> Vec<String> {
    rates
        .iter()
        .map(|rate| {
            let endpoint = rate
                .endpoint
                .as_deref()
                .map_or_else(|| "an unknown endpoint".into(), escape);
            let per_second = rate
                .per_second
                .map_or_else(|| "rate n/a".to_string(), |r| format!("{r:.2}/s"));
            let throttles = if rate.throttles_by_code.is_empty() {
                "no throttles".to_string()
            } else {
                let codes: Vec<String> = rate
                    .throttles_by_code
                    .iter()
                    .map(|(code, n)| format!("{} {n}", escape(code)))
                    .collect();
                format!("throttled {}", codes.join(", "))
            };
            let account = rate
                .account
                .as_deref()
                .map(|a| format!(" as account {}", escape(a)))
                .unwrap_or_default();
            format!(
                "{indent}{} at {endpoint}{account}: {} requests, {}..{} UTC, {per_second}, {throttles}",
                escape(&rate.action),
                rate.requests,
                clock(rate.first_sent_at),
                clock(rate.last_sent_at),
            )
        })
        .collect()
}

/// Unix ms as `HH:MM:SS.mmm` UTC.
pub(crate) fn clock(ms: i64) -> String {
    let format = time::macros::format_description!("[hour]:[minute]:[second].[subsecond digits:3]");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_line_per_action_and_endpoint_with_throttles_by_code() {
        let rate = EndpointRate {
            action: "DisassociateInstancesKeyPairs".into(),
            endpoint: Some("https://cvm.ap-guangzhou.tencentcloudapi.com/".into()),
            account: None,
            requests: 11,
            first_sent_at: 1_000,
            last_sent_at: 2_000,
            per_second: Some(10.0),
            throttled: 3,
            throttles_by_code: BTreeMap::from([("RequestLimitExceeded".into(), 3)]),
        };
        let unknown = EndpointRate {
            endpoint: None,
            requests: 1,
            per_second: None,
            throttled: 0,
            throttles_by_code: BTreeMap::new(),
            ..rate.clone()
        };
        assert_eq!(
            lines(&[unknown, rate], "  "),
            vec![
                "  DisassociateInstancesKeyPairs at an unknown endpoint: 1 requests, \
                 00:00:01.000..00:00:02.000 UTC, rate n/a, no throttles",
                "  DisassociateInstancesKeyPairs at https://cvm.ap-guangzhou.tencentcloudapi.com/: \
                 11 requests, 00:00:01.000..00:00:02.000 UTC, 10.00/s, throttled RequestLimitExceeded 3",
            ]
        );
    }
}
