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
//! instances, no more, when the fleet holds still.
//!
//! A walk is complete only when every page reported the same `TotalCount` and the
//! distinct instances seen equal it: an instance created or terminated mid-walk (Auto
//! Scaling does this all day) shifts the offsets, and one at a page boundary would be
//! skipped. Otherwise the region is walked again, up to [`MAX_WALKS`] times, and then
//! reported INCOMPLETE. Independently, every instance that `DescribeKeyPairs` names
//! (`AssociatedInstanceIds`, asked before and after the walks) and no walk listed is
//! looked up by id in every region walked; one found nowhere is reported, and the
//! discovery is incomplete.

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
/// Walks of one region before it is reported INCOMPLETE because the listing kept
/// changing under it.
pub const MAX_WALKS: u32 = 3;
/// The code of a region whose listing changed during each of its walks.
pub const FLEET_CHANGED: &str = "KeyFleet.FleetChanged";
/// The code of a region `DescribeRegions` listed under a name that is not a region name.
pub const MALFORMED_REGION: &str = "KeyFleet.MalformedRegion";

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

impl DiscoverOptions {
    /// Options for `keys` in `regions`, retried and paced as `config` says.
    pub fn new(
        keys: Vec<String>,
        regions: Option<Vec<String>>,
        home_region: String,
        config: &crate::executor::ExecConfig,
    ) -> DiscoverOptions {
        DiscoverOptions {
            keys,
            regions,
            home_region,
            max_attempts: config.max_attempts,
            retry_base: config.retry_base,
            retry_cap: config.retry_cap,
            throttle_delay: config.throttle_delay,
        }
    }
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
    /// As `--regions` or `DescribeRegions` gave it: escape it before showing it.
    pub region: String,
    /// Instances listed (by the last walk), plus those found by id.
    pub scanned: u64,
    /// DescribeInstances requests answered for this region, every walk and lookup.
    pub pages: u64,
    /// Walks of the region's pages (more than 1 when the listing changed meanwhile).
    pub walks: u32,
    /// Instances `DescribeKeyPairs` named that the walks missed and a lookup by id
    /// found here.
    pub looked_up: u64,
    /// Why the region could not be walked to the end (code, message).
    pub failed: Option<(String, String)>,
}

/// An instance `DescribeKeyPairs` says holds a key, found in none of the regions
/// walked (not even by id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unlocated {
    pub instance_id: String,
    pub key_id: String,
}

/// The result: matches sorted by (region, instance, key), and every region's scan.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub found: Vec<Found>,
    pub regions: Vec<RegionScan>,
    /// Holders `DescribeKeyPairs` named that are in none of the regions walked.
    pub unlocated: Vec<Unlocated>,
    /// DescribeInstances requests that got an answer, all regions.
    pub requests: u64,
}

impl Discovery {
    /// True when the list may lack a holder: some region could not be walked
    /// completely, or some instance named as a holder was found in no region walked.
    pub fn is_incomplete(&self) -> bool {
        self.regions.iter().any(|r| r.failed.is_some()) || !self.unlocated.is_empty()
    }

    /// The regions walked, where templates are looked for too (a region name
    /// DescribeRegions gave that is not region-shaped is never asked).
    pub fn walked_regions(&self) -> Vec<String> {
        self.regions
            .iter()
            .map(|r| r.region.clone())
            .filter(|r| crate::ids::is_region(r))
            .collect()
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
    let mut holders = sender.check_keys(&keys).await?;
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
    let mut walks = JoinSet::new();
    let mut scans: BTreeMap<String, Walked> = BTreeMap::new();
    for region in regions {
        if !ids::is_region(&region) {
            // Never put into a URL or walked; shown (escaped) as a region not walked.
            scans.insert(
                region.clone(),
                Walked::failed(
                    &region,
                    MALFORMED_REGION,
                    "DescribeRegions listed this name, which is not a region name: not walked",
                ),
            );
            continue;
        }
        let sender = sender.clone();
        walks.spawn(async move { sender.walk(region).await });
    }
    while let Some(walk) = walks.join_next().await {
        // A walk task cannot panic short of a bug; its region then counts as failed.
        let walked =
            walk.unwrap_or_else(|e| Walked::failed("?", "KeyFleet.Internal", &e.to_string()));
        scans.insert(walked.scan.region.clone(), walked);
    }
    // Asked again: holders bound or launched while the walks ran are named now. A
    // holder named before and not now (terminated, or its key removed meanwhile) is
    // still looked up, but only one named now counts as missing when found nowhere.
    let current = match sender.key_holders(&keys).await {
        Ok(after) => {
            for (instance, held) in &after {
                holders
                    .entry(instance.clone())
                    .or_default()
                    .extend(held.iter().cloned());
            }
            after
        }
        Err(refused) => {
            tracing::warn!(code = %refused.code, "DescribeKeyPairs after the walks refused");
            holders.clone()
        }
    };
    let missed: Vec<String> = holders
        .keys()
        .filter(|id| !scans.values().any(|w| w.instances.contains_key(*id)))
        .cloned()
        .collect();
    let mut located: BTreeSet<String> = BTreeSet::new();
    if !missed.is_empty() {
        let regions: Vec<String> = scans
            .keys()
            .filter(|r| ids::is_region(r) && *r != "?")
            .cloned()
            .collect();
        for region in regions {
            let (instances, requests) = sender.lookup(&region, &missed).await;
            let Some(walked) = scans.get_mut(&region) else {
                continue;
            };
            walked.scan.pages += requests;
            for instance in instances {
                if located.insert(instance.instance_id.clone()) {
                    walked.scan.looked_up += 1;
                    walked
                        .instances
                        .insert(instance.instance_id.clone(), instance);
                }
            }
        }
    }
    let mut discovery = Discovery::default();
    for instance_id in missed.iter().filter(|id| !located.contains(*id)) {
        let Some(held) = current.get(instance_id) else {
            continue;
        };
        for key_id in held {
            discovery.unlocated.push(Unlocated {
                instance_id: instance_id.clone(),
                key_id: key_id.clone(),
            });
        }
    }
    for (_, mut walked) in scans {
        walked.scan.scanned = walked.instances.len() as u64;
        discovery
            .found
            .extend(matches(&walked.scan.region, &walked.instances, &keys));
        discovery.requests += walked.scan.pages;
        discovery.regions.push(walked.scan);
    }
    discovery.found.sort();
    discovery.found.dedup();
    discovery.unlocated.sort();
    discovery.regions.sort_by(|a, b| a.region.cmp(&b.region));
    Ok(discovery)
}

/// Every (instance, key) of `keys` that `instances` of `region` hold.
fn matches(
    region: &str,
    instances: &BTreeMap<String, InstanceInfo>,
    keys: &[String],
) -> Vec<Found> {
    let mut found = Vec::new();
    for instance in instances.values() {
        let held: Vec<&String> = keys
            .iter()
            .filter(|k| instance.key_ids.contains(k))
            .collect();
        let keys_after = instance.key_ids.len() - held.len();
        for key in held {
            found.push(Found {
                region: region.to_string(),
                instance_id: instance.instance_id.clone(),
                key_id: key.clone(),
                instance_state: instance.instance_state.clone(),
                os_name: instance.os_name.clone(),
                keys_after,
            });
        }
    }
    found
}

/// One region's scan and the instances it listed, by id.
struct Walked {
    scan: RegionScan,
    instances: BTreeMap<String, InstanceInfo>,
}

impl Walked {
    fn failed(region: &str, code: &str, message: &str) -> Walked {
        Walked {
            scan: RegionScan {
                region: region.to_string(),
                scanned: 0,
                pages: 0,
                walks: 0,
                looked_up: 0,
                failed: Some((code.to_string(), message.to_string())),
            },
            instances: BTreeMap::new(),
        }
    }
}

/// One walk of a region's pages.
#[derive(Default)]
struct Pass {
    instances: BTreeMap<String, InstanceInfo>,
    pages: u64,
    /// Every `TotalCount` the pages reported (`None`: a page without one).
    totals: BTreeSet<Option<u64>>,
    failed: Option<(String, String)>,
}

impl Pass {
    fn take(&mut self, page: api::InstancePage) {
        self.pages += 1;
        self.totals.insert(page.total_count);
        for instance in page.instances {
            self.instances
                .entry(instance.instance_id.clone())
                .or_insert(instance);
        }
    }

    /// Complete: every page reported one `TotalCount`, and it is the number of
    /// distinct instances listed. `Err` says what did not add up.
    fn check(&self) -> Result<(), String> {
        let seen = self.instances.len() as u64;
        match self.totals.iter().collect::<Vec<_>>()[..] {
            [Some(total)] if *total == seen => Ok(()),
            [Some(total)] => Err(format!(
                "TotalCount {total} but {seen} distinct instances listed"
            )),
            _ if self.totals.contains(&None) => {
                Err("a page gave no TotalCount, so the listing cannot be checked".to_string())
            }
            _ => Err(format!(
                "the pages reported TotalCount {}; {seen} distinct instances listed",
                self.totals
                    .iter()
                    .flatten()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// Sends discovery's requests: paced, retried, classified (the incident's reads and
/// writes of the `incident` module go through it too).
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

    /// Every key exists (DescribeKeyPairs names the ones that do not); returns the
    /// instances it names as holders (`AssociatedInstanceIds`) and their keys.
    async fn check_keys(&self, keys: &[String]) -> Result<Holders, DiscoverError> {
        let mut holders = Holders::new();
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
                    add_holders(&mut holders, chunk, listed);
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
        Ok(holders)
    }

    /// The holders `DescribeKeyPairs` names now (asked again after the walks, for
    /// instances bound or launched meanwhile).
    async fn key_holders(&self, keys: &[String]) -> Result<Holders, Refused> {
        let mut holders = Holders::new();
        for chunk in keys.chunks(ids::MAX_IDS_PER_REQUEST) {
            let call = Call {
                action: Action::DescribeKeyPairs,
                region: self.options.home_region.clone(),
                body: json!({ "KeyIds": chunk, "Limit": ids::MAX_IDS_PER_REQUEST }),
            };
            let reply = self.send(call).await?;
            let listed = api::parse_key_pairs(&reply.response, &reply.request_id)?;
            add_holders(&mut holders, chunk, listed);
        }
        Ok(holders)
    }

    /// `ids` looked up in `region` by id, 100 at a time; returns those found there
    /// and the requests answered. A refused lookup leaves its ids unfound.
    async fn lookup(&self, region: &str, wanted: &[String]) -> (Vec<InstanceInfo>, u64) {
        let (mut found, mut requests) = (Vec::new(), 0);
        for chunk in wanted.chunks(ids::MAX_IDS_PER_REQUEST) {
            let call = Call {
                action: Action::DescribeInstances,
                region: region.to_string(),
                body: json!({ "InstanceIds": chunk, "Limit": PAGE_LIMIT }),
            };
            let page = match self.send(call).await {
                Ok(reply) => {
                    requests += 1;
                    api::parse_instance_page(&reply.response, &reply.request_id, 0, PAGE_LIMIT)
                }
                Err(refused) => {
                    tracing::warn!(%region, code = %refused.code, "lookup by instance id refused");
                    continue;
                }
            };
            match page {
                // Only the ids asked for: a reply cannot add instances of its own.
                Ok(page) => found.extend(
                    page.instances
                        .into_iter()
                        .filter(|i| chunk.contains(&i.instance_id)),
                ),
                Err(e) => tracing::warn!(%region, error = %e, "unreadable lookup reply"),
            }
        }
        (found, requests)
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

    /// Walks one region until a walk is complete (see [`Pass::check`]) or
    /// [`MAX_WALKS`] walks found the listing changing; returns its scan and instances.
    async fn walk(self: Arc<Self>, region: String) -> Walked {
        let mut scan = RegionScan {
            region: region.clone(),
            scanned: 0,
            pages: 0,
            walks: 0,
            looked_up: 0,
            failed: None,
        };
        let mut instances = BTreeMap::new();
        for walk in 1..=MAX_WALKS {
            let pass = self.clone().walk_once(&region).await;
            scan.walks = walk;
            scan.pages += pass.pages;
            let checked = pass.check();
            // Without a TotalCount no walk can be checked: walking again cannot help.
            let last = walk == MAX_WALKS || pass.totals.contains(&None);
            // Whatever was listed is kept (an incomplete walk still found these).
            instances = pass.instances;
            if let Some(failed) = pass.failed {
                scan.failed = Some(failed);
                break;
            }
            match checked {
                Ok(()) => break,
                Err(why) if last => {
                    scan.failed = Some((
                        FLEET_CHANGED.to_string(),
                        format!("the listing did not add up in {walk} walk(s): {why}"),
                    ));
                    break;
                }
                Err(why) => {
                    tracing::info!(%region, walk, %why, "the listing changed during the walk: walking again");
                }
            }
        }
        Walked { scan, instances }
    }

    /// One walk of a region's pages: the first, then the rest side by side.
    async fn walk_once(self: Arc<Self>, region: &str) -> Pass {
        let mut pass = Pass::default();
        let first = match self.page(region, 0).await {
            Ok(first) => first,
            Err(refused) => {
                pass.failed = Some((refused.code, refused.message));
                return pass;
            }
        };
        let total = first.total_count;
        let mut next = first.next_offset;
        pass.take(first);
        if let Some(total) = total {
            // Every later page at the limiter's pace, PAGES_IN_FLIGHT at a time
            // (a new one leaves as soon as one returns: no pause between waves).
            let mut offsets = (1..total.div_ceil(PAGE_LIMIT)).map(|p| p * PAGE_LIMIT);
            let mut pages = JoinSet::new();
            loop {
                while pass.failed.is_none() && pages.len() < PAGES_IN_FLIGHT {
                    let Some(offset) = offsets.next() else { break };
                    let (sender, region) = (self.clone(), region.to_string());
                    pages.spawn(async move { sender.page(&region, offset).await });
                }
                let Some(page) = pages.join_next().await else {
                    break;
                };
                match page {
                    Ok(Ok(page)) => pass.take(page),
                    Ok(Err(refused)) => {
                        pass.failed.get_or_insert((refused.code, refused.message));
                    }
                    Err(e) => {
                        pass.failed
                            .get_or_insert(("KeyFleet.Internal".into(), e.to_string()));
                    }
                }
            }
        } else {
            // No total: follow the pages one after another.
            while let Some(offset) = next {
                match self.page(region, offset).await {
                    Ok(page) => {
                        next = page.next_offset;
                        pass.take(page);
                    }
                    Err(refused) => {
                        pass.failed = Some((refused.code, refused.message));
                        break;
                    }
                }
            }
        }
        pass
    }
}

/// Instance id -> the looked-for keys `DescribeKeyPairs` says it holds.
type Holders = BTreeMap<String, BTreeSet<String>>;

/// Adds what `listed` names for the keys of `asked` (a reply cannot add other keys).
fn add_holders(holders: &mut Holders, asked: &[String], listed: Vec<api::KeyPairInfo>) {
    for pair in listed {
        if !asked.contains(&pair.key_id) {
            continue;
        }
        for instance in pair.associated_instance_ids {
            // A malformed id is never sent back in a lookup.
            if ids::is_instance_id(&instance) {
                holders
                    .entry(instance)
                    .or_default()
                    .insert(pair.key_id.clone());
            }
        }
    }
}

impl<A: Api> Sender<A> {
    /// A sender for `options`' pacing and retries (used by the `incident` module).
    pub(crate) fn new(api: Arc<A>, limiter: Arc<dyn Limiter>, options: DiscoverOptions) -> Self {
        Sender {
            api,
            limiter,
            options,
            turns: std::sync::Mutex::new(BTreeMap::new()),
        }
    }
}
