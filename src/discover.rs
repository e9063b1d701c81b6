//! `keyfleet discover`: from leaked key ids to plan input.
//!
//! Checks that the keys exist (`DescribeKeyPairs`), lists the regions when asked for
//! all of them (`DescribeRegions`), then walks `DescribeInstances` in pages of 100 in
//! every region and keeps each instance whose `LoginSettings.KeyIds` holds one of
//! the keys. Every request goes through the executor's [`Api`] and [`Limiter`] (so it
//! is paced per API, endpoint and SecretId at that API's documented limit, beside
//! any run of the same process) and is retried by the same classification and delay
//! policy as a run's requests. Discovery is a read: nothing is stored, and running it
//! again gives the same bytes for the same fleet (sorted by region, instance, key).
//!
//! Pages after the first of a region are sent side by side once its `TotalCount`
//! is known, so a region is walked at the full rate: ceil(N / 100) requests for N
//! instances, no more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use serde_json::json;
use tokio::task::JoinSet;

use crate::api::{self, InstanceInfo};
use crate::cvm::Action;
use crate::executor::pacer::{Feedback, LimiterKey};
use crate::executor::{Api, Call, Limiter, Refused, Reply};
use crate::ids;
use crate::taxonomy::{ErrorClass, classify};

/// Instances asked for per `DescribeInstances` page (the API's maximum).
pub const PAGE_LIMIT: u64 = ids::MAX_IDS_PER_REQUEST as u64;
/// Pages of one region in flight at once.
const PAGES_IN_FLIGHT: usize = 16;

/// What to look for, and where.
#[derive(Debug, Clone)]
pub struct DiscoverOptions {
    /// The key ids to find (validated, distinct).
    pub keys: Vec<String>,
    /// Regions to walk; `None`: every region `DescribeRegions` lists.
    pub regions: Option<Vec<String>>,
    /// The region requests that are not about one region go to (DescribeKeyPairs,
    /// DescribeRegions).
    pub home_region: String,
    /// Retry-class failures one request may have before its region fails.
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub throttle_delay: Duration,
}

/// One instance that holds one of the keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Found {
    pub region: String,
    pub instance_id: String,
    pub key_id: String,
    pub instance_state: String,
    pub os_name: String,
    /// How many keys the instance keeps once every looked-for key it holds is gone
    /// (0: it will accept only password login afterwards).
    pub keys_after: usize,
}

impl Found {
    /// Windows instances cannot have keys unbound.
    pub fn is_windows(&self) -> bool {
        self.os_name.to_ascii_lowercase().contains("windows")
    }
}

/// What was seen of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionScan {
    pub region: String,
    /// Instances listed.
    pub scanned: u64,
    /// Pages (requests that succeeded).
    pub pages: u64,
    /// Why the region could not be walked to the end (code, message).
    pub failed: Option<(String, String)>,
}

/// The result: matches sorted by (region, instance, key), and every region's scan.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub found: Vec<Found>,
    pub regions: Vec<RegionScan>,
    /// DescribeInstances requests that got an answer, all regions.
    pub requests: u64,
}

impl Discovery {
    /// True when some region could not be walked: the list may lack instances.
    pub fn is_incomplete(&self) -> bool {
        self.regions.iter().any(|r| r.failed.is_some())
    }
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("{0:?} is not a key pair id (skey- followed by 8 characters of 0-9 or a-z)")]
    MalformedKey(String),
    #[error("{0:?} is not a region name like ap-guangzhou")]
    MalformedRegion(String),
    #[error("key pair {keys} does not exist in this account ({code})")]
    UnknownKey { keys: String, code: String },
    #[error("region {region} is not one this account can use (DescribeRegions lists: {known})")]
    UnknownRegion { region: String, known: String },
    #[error("{action} failed: {code}: {message}")]
    Refused {
        action: Action,
        code: String,
        message: String,
    },
}

/// Discovers every instance holding one of `options.keys`.
pub async fn discover<A: Api>(
    api: Arc<A>,
    limiter: Arc<dyn Limiter>,
    options: &DiscoverOptions,
) -> Result<Discovery, DiscoverError> {
    for key in &options.keys {
        if !ids::is_key_id(key) {
            return Err(DiscoverError::MalformedKey(key.clone()));
        }
    }
    let mut keys = options.keys.clone();
    keys.sort();
    keys.dedup();
    let sender = Sender {
        api,
        limiter,
        options: options.clone(),
        turns: std::sync::Mutex::new(BTreeMap::new()),
    };
    sender.check_keys(&keys).await?;
    let regions = match &options.regions {
        Some(regions) => {
            for region in regions {
                if !ids::is_region(region) {
                    return Err(DiscoverError::MalformedRegion(region.clone()));
                }
            }
            // Checked against DescribeRegions when it answers with a list; a
            // sub-account that may not list regions still walks the ones it named.
            if let Ok(known) = sender.regions().await
                && !known.is_empty()
                && let Some(unknown) = regions.iter().find(|r| !known.contains(r.as_str()))
            {
                return Err(DiscoverError::UnknownRegion {
                    region: unknown.clone(),
                    known: known.into_iter().collect::<Vec<_>>().join(", "),
                });
            }
            regions.iter().cloned().collect::<BTreeSet<_>>()
        }
        None => sender.regions().await?,
    };
    let sender = Arc::new(sender);
    let keys = Arc::new(keys);
    let mut walks = JoinSet::new();
    for region in regions {
        let (sender, keys) = (sender.clone(), keys.clone());
        walks.spawn(async move { sender.walk(region, &keys).await });
    }
    let mut discovery = Discovery::default();
    while let Some(walk) = walks.join_next().await {
        // A walk task cannot panic short of a bug; its region then counts as failed.
        let (scan, found, requests) = walk.unwrap_or_else(|e| {
            (
                RegionScan {
                    region: "?".into(),
                    scanned: 0,
                    pages: 0,
                    failed: Some(("Keyfleet.Internal".into(), e.to_string())),
                },
                Vec::new(),
                0,
            )
        });
        discovery.found.extend(found);
        discovery.regions.push(scan);
        discovery.requests += requests;
    }
    discovery.found.sort();
    discovery.found.dedup();
    discovery.regions.sort_by(|a, b| a.region.cmp(&b.region));
    Ok(discovery)
}

/// Sends discovery's requests: paced, retried, classified (the incident's reads and
/// writes in [`crate::incident`] go through it too).
pub(crate) struct Sender<A> {
    api: Arc<A>,
    limiter: Arc<dyn Limiter>,
    options: DiscoverOptions,
    /// One reservation at a time per limiter key, as the executor's lanes do: a slot is
    /// taken only once the previous one's request has left, so a wake-up that came late
    /// cannot leave the next, already reserved, slot right behind it.
    turns: std::sync::Mutex<BTreeMap<LimiterKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl<A: Api> Sender<A> {
    /// One call, paced under its limiter key and retried as a run would retry it.
    pub(crate) async fn send(&self, call: Call) -> Result<Reply, Refused> {
        let key = LimiterKey {
            action: call.action,
            endpoint: self.api.endpoint_of(call.action, &call.region),
            secret_id: self.api.secret_id(),
        };
        let mut failures = 0u32;
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let turn = self
            .turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        loop {
            {
                let _turn = turn.lock().await;
                self.limiter.reserve(&key).await;
            }
            let refused = match self.api.call(&call).await {
                Ok(reply) => {
                    self.limiter.feedback(&key, Feedback::Passed);
                    return Ok(reply);
                }
                Err(refused) => refused,
            };
            let class = classify(call.action, &refused.code).class;
            tracing::debug!(action = %call.action, region = %call.region, code = %refused.code, %class, "discovery request refused");
            let wait = match class {
                ErrorClass::Throttle => {
                    self.limiter
                        .feedback(&key, Feedback::for_code(&refused.code));
                    self.options.throttle_delay
                }
                ErrorClass::Retry => {
                    self.limiter.feedback(&key, Feedback::Passed);
                    failures += 1;
                    if failures >= self.options.max_attempts {
                        return Err(refused);
                    }
                    crate::delay::retry_delay_with(
                        failures,
                        self.options.retry_base,
                        self.options.retry_cap,
                        &mut rng,
                    )
                }
                ErrorClass::Isolate | ErrorClass::Fatal => return Err(refused),
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn refused(action: Action, refused: Refused) -> DiscoverError {
        DiscoverError::Refused {
            action,
            code: refused.code,
            message: refused.message,
        }
    }

    /// Every key exists (DescribeKeyPairs names the ones that do not).
    async fn check_keys(&self, keys: &[String]) -> Result<(), DiscoverError> {
        for chunk in keys.chunks(ids::MAX_IDS_PER_REQUEST) {
            let call = Call {
                action: Action::DescribeKeyPairs,
                region: self.options.home_region.clone(),
                body: json!({ "KeyIds": chunk, "Limit": ids::MAX_IDS_PER_REQUEST }),
            };
            match self.send(call).await {
                Ok(reply) => {
                    let listed = api::parse_key_pairs(&reply.response, &reply.request_id)
                        .map_err(|e| Self::refused(Action::DescribeKeyPairs, e.into()))?;
                    let missing: Vec<&String> = chunk
                        .iter()
                        .filter(|k| !listed.iter().any(|l| &l.key_id == *k))
                        .collect();
                    if !missing.is_empty() {
                        return Err(DiscoverError::UnknownKey {
                            keys: missing
                                .iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            code: "not listed by DescribeKeyPairs".into(),
                        });
                    }
                }
                Err(refused) if refused.code.starts_with("InvalidKeyPairId.") => {
                    return Err(DiscoverError::UnknownKey {
                        keys: chunk.join(", "),
                        code: refused.code,
                    });
                }
                Err(refused) => return Err(Self::refused(Action::DescribeKeyPairs, refused)),
            }
        }
        Ok(())
    }

    /// The regions `DescribeRegions` lists as available.
    pub(crate) async fn regions(&self) -> Result<BTreeSet<String>, DiscoverError> {
        let call = Call {
            action: Action::DescribeRegions,
            region: self.options.home_region.clone(),
            body: json!({}),
        };
        let reply = self
            .send(call)
            .await
            .map_err(|r| Self::refused(Action::DescribeRegions, r))?;
        let regions = api::parse_regions(&reply.response, &reply.request_id)
            .map_err(|e| Self::refused(Action::DescribeRegions, e.into()))?;
        Ok(regions
            .into_iter()
            .filter(|r| r.region_state.is_empty() || r.region_state == "AVAILABLE")
            .map(|r| r.region)
            .collect())
    }

    async fn page(&self, region: &str, offset: u64) -> Result<api::InstancePage, Refused> {
        let call = Call {
            action: Action::DescribeInstances,
            region: region.to_string(),
            body: json!({ "Offset": offset, "Limit": PAGE_LIMIT }),
        };
        let reply = self.send(call).await?;
        api::parse_instance_page(&reply.response, &reply.request_id, offset, PAGE_LIMIT)
            .map_err(Refused::from)
    }

    /// Walks one region; returns its scan, its matches and the requests answered.
    async fn walk(
        self: Arc<Self>,
        region: String,
        keys: &[String],
    ) -> (RegionScan, Vec<Found>, u64) {
        let mut scan = RegionScan {
            region: region.clone(),
            scanned: 0,
            pages: 0,
            failed: None,
        };
        let mut instances: BTreeMap<String, InstanceInfo> = BTreeMap::new();
        let mut take = |page: api::InstancePage, scan: &mut RegionScan| {
            scan.pages += 1;
            for instance in page.instances {
                instances
                    .entry(instance.instance_id.clone())
                    .or_insert(instance);
            }
        };
        match self.page(&region, 0).await {
            Err(refused) => scan.failed = Some((refused.code, refused.message)),
            Ok(first) => {
                let total = first.total_count;
                let mut next = first.next_offset;
                take(first, &mut scan);
                if let Some(total) = total {
                    // Every later page at the limiter's pace, PAGES_IN_FLIGHT at a time
                    // (a new one leaves as soon as one returns: no pause between waves).
                    let mut offsets = (1..total.div_ceil(PAGE_LIMIT)).map(|p| p * PAGE_LIMIT);
                    let mut pages = JoinSet::new();
                    loop {
                        while scan.failed.is_none() && pages.len() < PAGES_IN_FLIGHT {
                            let Some(offset) = offsets.next() else { break };
                            let (sender, region) = (self.clone(), region.clone());
                            pages.spawn(async move { sender.page(&region, offset).await });
                        }
                        let Some(page) = pages.join_next().await else {
                            break;
                        };
                        match page {
                            Ok(Ok(page)) => take(page, &mut scan),
                            Ok(Err(refused)) => {
                                scan.failed.get_or_insert((refused.code, refused.message));
                            }
                            Err(e) => {
                                scan.failed
                                    .get_or_insert(("Keyfleet.Internal".into(), e.to_string()));
                            }
                        }
                    }
                } else {
                    // No total: follow the pages one after another.
                    while let Some(offset) = next {
                        match self.page(&region, offset).await {
                            Ok(page) => {
                                next = page.next_offset;
                                take(page, &mut scan);
                            }
                            Err(refused) => {
                                scan.failed = Some((refused.code, refused.message));
                                break;
                            }
                        }
                    }
                }
            }
        }
        scan.scanned = instances.len() as u64;
        let requests = scan.pages;
        let mut found = Vec::new();
        for instance in instances.values() {
            let held: Vec<&String> = keys
                .iter()
                .filter(|k| instance.key_ids.contains(k))
                .collect();
            let keys_after = instance.key_ids.len() - held.len();
            for key in held {
                found.push(Found {
                    region: region.clone(),
                    instance_id: instance.instance_id.clone(),
                    key_id: key.clone(),
                    instance_state: instance.instance_state.clone(),
                    os_name: instance.os_name.clone(),
                    keys_after,
                });
            }
        }
        (scan, found, requests)
    }
}

impl<A: Api> Sender<A> {
    /// A sender for `options`' pacing and retries (used by [`crate::incident`]).
    pub(crate) fn new(api: Arc<A>, limiter: Arc<dyn Limiter>, options: DiscoverOptions) -> Self {
        Sender {
            api,
            limiter,
            options,
            turns: std::sync::Mutex::new(BTreeMap::new()),
        }
    }
}
