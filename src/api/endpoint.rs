//! Where calls go: endpoint URLs and templates, the http/https check, the proxy.

use reqwest::Url;

use super::resolve;
use super::{
    CallError, ClientConfig, ClientError, REGION_PLACEHOLDER, SERVICE_PLACEHOLDER, Service,
    TransportError, TransportKind,
};

/// How a client's requests travel, as [`check_transport`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `https://`: TLS, the certificate verified against the system's roots.
    Tls,
    /// `http://` to `localhost`, 127.0.0.0/8 or `::1` (the simulator): nothing leaves the machine.
    LoopbackHttp,
    /// `http://` to another host, allowed by `--insecure-http`: everything, the
    /// credentials included, can be read and replayed on the way.
    InsecureHttp,
}

/// Decides whether requests may go to `url`: https always; http only to loopback
/// (`localhost`, 127.0.0.0/8, `::1`) unless `insecure_http`. Called for every
/// endpoint a client is built for, before anything is sent.
pub fn check_transport(url: &Url, insecure_http: bool) -> Result<Transport, ClientError> {
    check_transport_resolved(url, insecure_http, &[])
}

/// [`check_transport`] with `--resolve` rules: a host they connect to a loopback
/// address counts as loopback ([`resolve::is_loopback_host`]). Called for every URL a
/// `{region}` template gives, before anything is sent.
pub fn check_transport_resolved(
    url: &Url,
    insecure_http: bool,
    rules: &[resolve::ResolveRule],
) -> Result<Transport, ClientError> {
    // Judged on where the connection goes: a `--resolve` rule covering the host
    // decides, even for `localhost` (the audit's L1).
    let loopback = resolve::is_loopback_host(url.host_str().unwrap_or_default(), rules);
    match url.scheme() {
        "https" => Ok(Transport::Tls),
        "http" if loopback => Ok(Transport::LoopbackHttp),
        "http" if insecure_http => Ok(Transport::InsecureHttp),
        "http" => Err(ClientError::InsecureHttp {
            endpoint: crate::ids::shorten(url.as_str()),
        }),
        _ => Err(ClientError::BadEndpoint {
            endpoint: crate::ids::shorten(url.as_str()),
            reason: "the scheme must be https:// (or http:// for a local endpoint)".into(),
        }),
    }
}

/// The proxy the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`,
/// upper or lower case) sends requests for `url` through, as `scheme://host:port`
/// without any user name or password; `None` when requests go direct. It is the same
/// matcher reqwest applies, so what this says is what happens.
pub fn proxy_for(url: &Url) -> Option<String> {
    let uri: hyper::Uri = url.as_str().parse().ok()?;
    let intercept = hyper_util::client::proxy::matcher::Matcher::from_system().intercept(&uri)?;
    let proxy = intercept.uri();
    let scheme = proxy.scheme_str().unwrap_or("http");
    let host = proxy.host().unwrap_or_default();
    Some(match proxy.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// Where calls go.
#[derive(Debug, Clone)]
pub(super) enum Endpoint {
    /// Every call to one URL; `host` is the `Host` header, exactly as sent and signed.
    Fixed { url: Url, host: String },
    /// Each call to the template with its region in place of [`REGION_PLACEHOLDER`] and
    /// its service's name in place of [`SERVICE_PLACEHOLDER`]; each URL it gives passes
    /// [`check_transport_resolved`] before it is used.
    Template {
        template: String,
        /// The template's URL for one region, for decisions made once (the proxy).
        sample: Url,
        insecure_http: bool,
        rules: Vec<resolve::ResolveRule>,
    },
}

impl Endpoint {
    /// The endpoint of `config` and how its requests travel (for a template, judged on
    /// one region's URL; every call's URL is checked again).
    pub(super) fn parse(config: &ClientConfig) -> Result<(Endpoint, Transport), ClientError> {
        let endpoint = config.endpoint.trim();
        if !endpoint.contains(REGION_PLACEHOLDER) && !endpoint.contains(SERVICE_PLACEHOLDER) {
            let (url, host) = parse_endpoint(endpoint)?;
            let transport = check_transport_resolved(&url, config.insecure_http, &config.resolve)?;
            return Ok((Endpoint::Fixed { url, host }, transport));
        }
        let fill = |service: Service, region: &str| fill_template(endpoint, service, region);
        let a = parse_endpoint(&fill(Service::Cvm, "ap-guangzhou"))?;
        // Each placeholder, varied alone, must change the host and nothing else: it
        // belongs in the host name.
        let variations = [
            (REGION_PLACEHOLDER, fill(Service::Cvm, "ap-shanghai")),
            (SERVICE_PLACEHOLDER, fill(Service::As, "ap-guangzhou")),
        ];
        for (placeholder, varied) in variations {
            if !endpoint.contains(placeholder) {
                continue;
            }
            let b = parse_endpoint(&varied)?;
            if a.0.host_str() == b.0.host_str() || a.0.port() != b.0.port() {
                return Err(ClientError::BadEndpoint {
                    endpoint: crate::ids::shorten(endpoint),
                    reason: format!("{placeholder} may appear only in the host name"),
                });
            }
        }
        let transport = check_transport_resolved(&a.0, config.insecure_http, &config.resolve)?;
        let template = Endpoint::Template {
            template: endpoint.to_string(),
            sample: a.0,
            insecure_http: config.insecure_http,
            rules: config.resolve.clone(),
        };
        Ok((template, transport))
    }

    /// The URL, or the template as given.
    pub(super) fn shown(&self) -> &str {
        match self {
            Endpoint::Fixed { url, .. } => url.as_str(),
            Endpoint::Template { template, .. } => template,
        }
    }

    /// The URL, or the template's for one region: what the proxy decision is made on
    /// (the environment's proxy variables name hosts, so every region fares alike
    /// unless NO_PROXY names one).
    pub(super) fn sample_url(&self) -> &Url {
        match self {
            Endpoint::Fixed { url, .. } => url,
            Endpoint::Template { sample, .. } => sample,
        }
    }

    /// The URL and `Host` header for a CVM call to `region`.
    #[cfg(test)]
    pub(super) fn for_region(&self, region: &str) -> Result<(Url, String), CallError> {
        self.for_call(Service::Cvm, region)
    }

    /// The URL and `Host` header for a call of `service` to `region`.
    pub(super) fn for_call(
        &self,
        service: Service,
        region: &str,
    ) -> Result<(Url, String), CallError> {
        match self {
            Endpoint::Fixed { url, host } => Ok((url.clone(), host.clone())),
            Endpoint::Template {
                template,
                insecure_http,
                rules,
                ..
            } => {
                let not_sent = |detail: String| {
                    CallError::Transport(TransportError::new(TransportKind::Connect, detail))
                };
                // A region becomes part of a host name: only region-shaped text may.
                if template.contains(REGION_PLACEHOLDER) && !crate::ids::is_region(region) {
                    return Err(not_sent(format!(
                        "not sent: the region {:?} cannot be part of an endpoint's host name",
                        crate::ids::shorten(region)
                    )));
                }
                let (url, host) = parse_endpoint(&fill_template(template, service, region))
                    .map_err(|err| not_sent(format!("not sent: {err}")))?;
                check_transport_resolved(&url, *insecure_http, rules)
                    .map_err(|err| not_sent(format!("not sent: {err}")))?;
                Ok((url, host))
            }
        }
    }
}

/// Checks an endpoint URL; returns it and the `Host` header value for it.
pub(super) fn parse_endpoint(endpoint: &str) -> Result<(Url, String), ClientError> {
    let bad = |reason: &str| ClientError::BadEndpoint {
        endpoint: crate::ids::shorten(endpoint),
        reason: reason.to_string(),
    };
    let url = Url::parse(endpoint.trim()).map_err(|err| bad(&format!("not a URL ({err})")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad(
            "the scheme must be https:// (or http:// for a local endpoint)",
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("there is no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not carry a user name or password"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "API 3.0 requests go to the root path: give only scheme, host and port",
        ));
    }
    // `port()` is None for the scheme's default port, which is also when clients omit it.
    let host_header = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok((url, host_header))
}

/// An endpoint template with `service`'s name and `region` in place of the placeholders.
pub(super) fn fill_template(template: &str, service: Service, region: &str) -> String {
    template
        .replace(SERVICE_PLACEHOLDER, service.name())
        .replace(REGION_PLACEHOLDER, region)
}
