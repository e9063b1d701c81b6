//! `--resolve HOST=ADDR`: connect a host name to a chosen address, as curl's
//! `--resolve` does, without changing the URL, the `Host` header or the signature.
//!
//! `HOST` is an exact name (`cvm.ap-guangzhou.tencentcloudapi.com`) or `*.SUFFIX`
//! (every name ending in `.SUFFIX`, such as `*.sim.test`); `ADDR` is an IP address,
//! optionally with a port (`127.0.0.1`, `127.0.0.1:9000`, `[::1]:9000`). Without a port,
//! the URL's port is used (its scheme's default when it names none); a port in the URL
//! always wins, as in reqwest. An exact rule beats a wildcard; among wildcards the
//! first given wins. Names no rule covers are resolved by the system as usual.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

/// One `HOST=ADDR` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRule {
    pattern: HostPattern,
    /// Port 0 when the rule names none (the URL's port is then used).
    addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Lower-cased.
    Exact(String),
    /// `.suffix`, lower-cased: matches names ending in it (not the bare suffix).
    Wildcard(String),
}

/// A `--resolve` value that is not `HOST=ADDR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--resolve {value:?}: {reason} (expected HOST=ADDR, e.g. '*.sim.test=127.0.0.1')")]
pub struct ResolveRuleError {
    value: String,
    reason: &'static str,
}

impl FromStr for ResolveRule {
    type Err = ResolveRuleError;

    fn from_str(text: &str) -> Result<ResolveRule, ResolveRuleError> {
        let bad = |reason| ResolveRuleError {
            value: crate::ids::shorten(text),
            reason,
        };
        let (host, addr) = text.split_once('=').ok_or_else(|| bad("there is no '='"))?;
        let host = host.trim().to_ascii_lowercase();
        let pattern = match host.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') && is_host_name(&suffix[1..]) => {
                HostPattern::Wildcard(suffix.to_string())
            }
            Some(_) => return Err(bad("a wildcard is '*.' followed by a domain")),
            None if is_host_name(&host) => HostPattern::Exact(host),
            None => return Err(bad("HOST is not a host name")),
        };
        Ok(ResolveRule {
            pattern,
            addr: parse_addr(addr.trim()).ok_or_else(|| bad("ADDR is not an IP address[:port]"))?,
        })
    }
}

impl fmt::Display for ResolveRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pattern {
            HostPattern::Exact(host) => write!(f, "{host}=")?,
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}=")?,
        }
        match self.addr.port() {
            0 => write!(f, "{}", self.addr.ip()),
            _ => write!(f, "{}", self.addr),
        }
    }
}

impl ResolveRule {
    /// True when this rule covers `host` (case-insensitive; no port).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match &self.pattern {
            HostPattern::Exact(name) => *name == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }

    /// The address connected to; port 0 means "the URL's port".
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The address `rules` give `host`, if any: an exact rule first, else the first wildcard.
pub fn lookup(rules: &[ResolveRule], host: &str) -> Option<SocketAddr> {
    let exact = rules
        .iter()
        .find(|r| matches!(r.pattern, HostPattern::Exact(_)) && r.matches(host));
    exact
        .or_else(|| rules.iter().find(|r| r.matches(host)))
        .map(ResolveRule::addr)
}

/// True when what keyfleet connects to for `host` (a URL's host, `[v6]` brackets
/// allowed) is a loopback address: an address literal by itself; a name covered by one
/// of `rules` by that rule's address alone (the connection goes there, so
/// `localhost=10.0.0.1` is not local); any other name only if it is `localhost`. For
/// checks such as "plain http only to loopback".
pub fn is_loopback_host(host: &str, rules: &[ResolveRule]) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        // An address is connected to as written: no rule applies to it.
        return ip.is_loopback();
    }
    match lookup(rules, bare) {
        Some(addr) => addr.ip().is_loopback(),
        None => bare.eq_ignore_ascii_case("localhost"),
    }
}

fn parse_addr(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

/// Letters, digits, hyphens and dots, at least one label: what a rule may name.
fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// reqwest's DNS resolver with the rules on top (reqwest's own `resolve` only takes
/// exact names): a covered name gets its rule's address, any other the system's answer.
#[derive(Debug)]
pub(crate) struct RuleResolver {
    rules: Arc<[ResolveRule]>,
}

impl RuleResolver {
    pub(crate) fn new(rules: &[ResolveRule]) -> RuleResolver {
        RuleResolver {
            rules: rules.into(),
        }
    }
}

impl reqwest::dns::Resolve for RuleResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let ruled = lookup(&self.rules, name.as_str());
        let host = name.as_str().to_string();
        Box::pin(async move {
            if let Some(addr) = ruled {
                let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(addr));
                return Ok(addrs);
            }
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> ResolveRule {
        text.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_print() {
        for text in [
            "*.sim.test=127.0.0.1",
            "cvm.ap-guangzhou.tencentcloudapi.com=127.0.0.1:9000",
            "h.test=[::1]:9000",
            "h.test=::1",
        ] {
            let parsed = rule(text);
            assert_eq!(rule(&parsed.to_string()), parsed, "{text}");
        }
        assert_eq!(rule("H.Test=10.0.0.1").to_string(), "h.test=10.0.0.1");
        for bad in [
            "no-equals",
            "h.test=not-an-ip",
            "h.test=example.com:80",
            "*sim.test=127.0.0.1",
            "*.=127.0.0.1",
            "=127.0.0.1",
            "a b=127.0.0.1",
        ] {
            let err = bad.parse::<ResolveRule>().unwrap_err().to_string();
            assert!(err.contains("HOST=ADDR"), "{bad}: {err}");
        }
    }

    #[test]
    fn exact_beats_wildcard_and_wildcards_need_a_label() {
        let rules = [
            rule("*.sim.test=127.0.0.2"),
            rule("cvm.ap-shanghai.sim.test=127.0.0.3:81"),
            rule("*.test=10.0.0.1"),
        ];
        let ip = |host: &str| lookup(&rules, host).map(|a| a.to_string());
        assert_eq!(
            ip("cvm.ap-guangzhou.sim.test").as_deref(),
            Some("127.0.0.2:0")
        );
        assert_eq!(
            ip("CVM.AP-SHANGHAI.SIM.TEST").as_deref(),
            Some("127.0.0.3:81")
        );
        assert_eq!(ip("other.test").as_deref(), Some("10.0.0.1:0"));
        assert_eq!(ip("sim.test").as_deref(), Some("10.0.0.1:0"));
        assert_eq!(ip("test"), None);
        assert_eq!(ip("cvm.tencentcloudapi.com"), None);
    }

    #[test]
    fn loopback_by_address_name_or_rule() {
        let rules = [rule("*.sim.test=127.0.0.1"), rule("far.test=192.0.2.1")];
        for host in [
            "127.0.0.1",
            "127.5.5.5",
            "[::1]",
            "localhost",
            "cvm.x.sim.test",
        ] {
            assert!(is_loopback_host(host, &rules), "{host}");
        }
        for host in [
            "far.test",
            "192.0.2.1",
            "cvm.tencentcloudapi.com",
            "sim.test",
        ] {
            assert!(!is_loopback_host(host, &rules), "{host}");
        }
    }

    /// The audit's L1: `localhost` was local by name even when a rule sent it elsewhere.
    /// A covered name is judged by its rule's address only; an address literal, which
    /// the resolver never sees, by itself.
    #[test]
    fn a_rule_decides_for_the_name_it_covers_even_localhost() {
        let away = [rule("localhost=0.0.0.0:18084"), rule("*.test=192.0.2.1")];
        for host in ["localhost", "LOCALHOST.", "x.test"] {
            assert!(!is_loopback_host(host, &away), "{host}");
        }
        assert!(is_loopback_host("127.0.0.1", &away));
        assert!(is_loopback_host("[::1]", &away));
        let here = [rule("localhost=127.0.0.1:9000")];
        assert!(is_loopback_host("localhost", &here));
        assert!(is_loopback_host("localhost", &[]));
    }
}
