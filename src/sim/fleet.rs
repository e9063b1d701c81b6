//! The simulated fleet: its JSON file format, seeded generation, and the live
//! state the server mutates (with settling states and busy windows on tokio's clock).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::SimError;
use super::holdings::{Holdings, KeyPair, LaunchConfiguration, LaunchTemplate};
use super::instance::duration_ms;
pub use super::instance::{Instance, InstanceState, Os};
pub(crate) use super::instance::{Operation, Step};
use super::power::{PowerEvent, PowerTimeline};
use crate::ids;

/// A whole fleet: the key pairs that exist and the instances. This is the fleet file's format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Key pairs that exist (besides every key an instance holds, which exists too).
    /// Any other well-formed key id gets InvalidKeyPairId.NotFound.
    #[serde(default)]
    pub keys: Vec<String>,
    pub instances: Vec<Instance>,
    /// Key pairs' names, public keys and referencing images (they exist too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_pairs: Vec<KeyPair>,
    /// CVM launch templates, with their versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub launch_templates: Vec<LaunchTemplate>,
    /// Auto Scaling launch configurations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub launch_configurations: Vec<LaunchConfiguration>,
}

/// The proportions of a generated fleet. Each fraction is the chance an instance
/// gets that trait; the rest are STOPPED Linux instances.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    pub regions: Vec<String>,
    /// Size of the shared key pool.
    pub key_pool: usize,
    /// Each instance holds between these many keys of the pool (inclusive).
    pub keys_per_instance: (usize, usize),
    pub windows: f64,
    pub running: f64,
    pub shutdown: f64,
    /// STOPPING or REBOOTING instances that settle into STOPPED.
    pub settling: f64,
    pub stop_charging: f64,
    pub banned: f64,
    pub frozen: f64,
    /// Instances busy for the first `busy_for`.
    pub busy: f64,
    pub busy_for: Duration,
    pub settle_after: Duration,
    /// Zone numbers each instance is spread over in its region (`3` is
    /// `ap-guangzhou-3`); empty: no `zone` (every instance in `{region}-1`).
    pub zones: Vec<u32>,
    /// Tags drawn for each instance: a key and the values it takes, e.g.
    /// (`service`, [`web`, `api`, `worker`]); empty: no tags.
    pub tags: Vec<(String, Vec<String>)>,
}

impl Mix {
    /// A production fleet: most instances RUNNING (80%), spread over three zones of
    /// `ap-guangzhou` (3, 4, 6), each tagged with a `service`, with rare Windows,
    /// SHUTDOWN, banned and frozen ones and no settling or busy ones (those follow the
    /// clock, and a live-fleet run should meet only what it causes).
    pub fn live() -> Mix {
        Mix {
            regions: vec!["ap-guangzhou".into()],
            windows: 0.01,
            running: 0.8,
            shutdown: 0.005,
            settling: 0.0,
            stop_charging: 0.0,
            banned: 0.002,
            frozen: 0.002,
            busy: 0.0,
            zones: vec![3, 4, 6],
            tags: vec![(
                "service".into(),
                vec!["web".into(), "api".into(), "worker".into()],
            )],
            ..Mix::default()
        }
    }
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            regions: vec!["ap-guangzhou".into(), "ap-shanghai".into()],
            key_pool: 12,
            keys_per_instance: (1, 4),
            windows: 0.04,
            running: 0.05,
            shutdown: 0.02,
            settling: 0.04,
            stop_charging: 0.01,
            banned: 0.005,
            frozen: 0.005,
            busy: 0.02,
            busy_for: Duration::from_secs(3),
            settle_after: Duration::from_secs(2),
            zones: Vec::new(),
            tags: Vec::new(),
        }
    }
}

/// Seeds the zone and tag draws apart from the rest, so a mix with zones or tags gives
/// the same instances, states and keys as the same mix without them.
const PLACEMENT_STREAM: u64 = 0x510e_527f_ade6_82d1;

const ID_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const LINUX_NAMES: [&str; 4] = [
    "TencentOS Server 3.1 (TK4)",
    "Ubuntu Server 22.04 LTS 64bit",
    "CentOS 7.9 64bit",
    "Debian 12.4 64bit",
];

fn random_id(rng: &mut StdRng, prefix: &str) -> String {
    let suffix: String = (0..8)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())]))
        .collect();
    format!("{prefix}{suffix}")
}

impl Fleet {
    /// An empty fleet, to fill with [`Fleet::with`] and [`Fleet::with_keys`].
    pub fn new() -> Fleet {
        Fleet::default()
    }

    /// Adds an instance.
    pub fn with(mut self, instance: Instance) -> Fleet {
        self.instances.push(instance);
        self
    }

    /// Declares a key pair with its details (name, public key, images).
    pub fn with_key_pair(mut self, key_pair: KeyPair) -> Fleet {
        self.key_pairs.push(key_pair);
        self
    }

    /// Adds a launch template.
    pub fn with_template(mut self, template: LaunchTemplate) -> Fleet {
        self.launch_templates.push(template);
        self
    }

    /// Adds a launch configuration.
    pub fn with_configuration(mut self, configuration: LaunchConfiguration) -> Fleet {
        self.launch_configurations.push(configuration);
        self
    }

    /// Declares key pairs that exist without being bound anywhere.
    pub fn with_keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Fleet {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Generates `n` instances from `seed`: the same arguments give the same fleet.
    pub fn generate(n: usize, seed: u64, mix: &Mix) -> Fleet {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seen = BTreeSet::new();
        let mut keys = Vec::new();
        while keys.len() < mix.key_pool.max(1) {
            let key = random_id(&mut rng, "skey-");
            if seen.insert(key.clone()) {
                keys.push(key);
            }
        }
        let regions: Vec<String> = if mix.regions.is_empty() {
            vec!["ap-guangzhou".to_string()]
        } else {
            mix.regions.clone()
        };
        let (lo, hi) = mix.keys_per_instance;
        let hi = hi.min(keys.len()).max(lo.min(keys.len()));
        let lo = lo.min(hi);
        let mut placement = StdRng::seed_from_u64(seed ^ PLACEMENT_STREAM);
        let mut instances = Vec::with_capacity(n);
        while instances.len() < n {
            let id = random_id(&mut rng, "ins-");
            if !seen.insert(id.clone()) {
                continue;
            }
            let region = regions[rng.random_range(0..regions.len())].clone();
            let mut instance = Instance::new(id, region);
            instance.os_name = LINUX_NAMES[rng.random_range(0..LINUX_NAMES.len())].to_string();
            let count = rng.random_range(lo..=hi);
            let mut held: Vec<String> = Vec::new();
            while held.len() < count {
                let key = &keys[rng.random_range(0..keys.len())];
                if !held.contains(key) {
                    held.push(key.clone());
                }
            }
            instance.key_ids = held;
            // One draw per trait keeps a trait's share independent of the others'.
            let mut roll = |p: f64| rng.random::<f64>() < p;
            if roll(mix.windows) {
                instance = instance.os(Os::Windows);
            }
            if roll(mix.running) {
                instance.state = InstanceState::Running;
            } else if roll(mix.shutdown) {
                instance.state = InstanceState::Shutdown;
            } else if roll(mix.settling) {
                instance.state = if roll(0.5) {
                    InstanceState::Stopping
                } else {
                    InstanceState::Rebooting
                };
                instance.settles_to = Some(InstanceState::Stopped);
                instance.settle_after_ms = Some(duration_ms(mix.settle_after));
            }
            if roll(mix.stop_charging) {
                instance.stop_charging = true;
            }
            if roll(mix.banned) {
                instance.banned = true;
            }
            if roll(mix.frozen) {
                instance.frozen = true;
            }
            if roll(mix.busy) {
                instance.busy_for_ms = Some(duration_ms(mix.busy_for));
            }
            if !mix.zones.is_empty() {
                let zone = mix.zones[placement.random_range(0..mix.zones.len())];
                instance.zone = Some(format!("{}-{zone}", instance.region));
            }
            for (key, values) in &mix.tags {
                if !values.is_empty() {
                    let value = &values[placement.random_range(0..values.len())];
                    instance.tags.insert(key.clone(), value.clone());
                }
            }
            instances.push(instance);
        }
        Fleet {
            keys,
            instances,
            ..Fleet::default()
        }
    }

    /// Parses a fleet file's text and checks it (see [`Fleet::validate`]).
    pub fn from_json(text: &str) -> Result<Fleet, SimError> {
        let mut fleet: Fleet =
            serde_json::from_str(text).map_err(|e| SimError::InvalidFleet(e.to_string()))?;
        fleet.normalize();
        fleet.validate()?;
        Ok(fleet)
    }

    /// Reads and checks a fleet file.
    pub fn load(path: impl AsRef<Path>) -> Result<Fleet, SimError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SimError::ReadFleet {
            path: path.to_path_buf(),
            source,
        })?;
        Fleet::from_json(&text).map_err(|e| match e {
            SimError::InvalidFleet(message) => SimError::FleetFile {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// The fleet as pretty JSON, in the fleet file format.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    fn normalize(&mut self) {
        for instance in &mut self.instances {
            if instance.os_name.is_empty() {
                instance.os_name = instance.os.default_name().to_string();
            }
        }
    }

    /// Checks ids, regions and uniqueness, naming the first offending instance.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |message: String| Err(SimError::InvalidFleet(message));
        if let Err(message) = super::holdings::validate_fleet(
            &self.key_pairs,
            &self.launch_templates,
            &self.launch_configurations,
        ) {
            return bad(message);
        }
        for key in &self.keys {
            if let Some(problem) = ids::key_id_problem(key) {
                return bad(format!("keys: {problem}"));
            }
        }
        let mut seen = BTreeSet::new();
        for (n, instance) in self.instances.iter().enumerate() {
            let at = format!("instances[{n}]");
            if let Some(problem) = ids::instance_id_problem(&instance.instance_id) {
                return bad(format!("{at}.instance_id: {problem}"));
            }
            if !seen.insert(instance.instance_id.as_str()) {
                return bad(format!(
                    "{at}.instance_id: {} appears twice",
                    instance.instance_id
                ));
            }
            if !ids::is_region(&instance.region) {
                return bad(format!(
                    "{at}.region: {:?} is not a region name such as ap-guangzhou",
                    ids::shorten(&instance.region)
                ));
            }
            for key in &instance.key_ids {
                if let Some(problem) = ids::key_id_problem(key) {
                    return bad(format!("{at}.key_ids: {problem}"));
                }
            }
            if let Some(zone) = &instance.zone {
                let in_region = zone
                    .strip_prefix(instance.region.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric()));
                if !in_region {
                    return bad(format!(
                        "{at}.zone: {:?} is not a zone of {} such as {}-3",
                        ids::shorten(zone),
                        instance.region,
                        instance.region
                    ));
                }
            }
            if instance.settle_after_ms.is_some()
                && instance.settles_to.is_none()
                && instance.state.default_settle_target().is_none()
            {
                return bad(format!(
                    "{at}.settle_after_ms: state {} is final; give settles_to as well",
                    instance.state.as_str()
                ));
            }
        }
        Ok(())
    }

    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    pub fn instance(&self, instance_id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.instance_id == instance_id)
    }

    /// Every (instance id, key id) binding, sorted.
    pub fn bindings(&self) -> BTreeSet<(String, String)> {
        self.instances
            .iter()
            .flat_map(|i| i.key_ids.iter().map(|k| (i.instance_id.clone(), k.clone())))
            .collect()
    }

    /// Every key pair that exists: declared ones and every bound one, sorted.
    pub fn all_keys(&self) -> BTreeSet<String> {
        self.keys
            .iter()
            .cloned()
            .chain(
                self.instances
                    .iter()
                    .flat_map(|i| i.key_ids.iter().cloned()),
            )
            .chain(self.key_pairs.iter().map(|k| k.key_id.clone()))
            .collect()
    }
}

/// An instance while the simulator runs: its file form plus absolute deadlines.
#[derive(Debug, Clone)]
pub(crate) struct LiveInstance {
    pub spec: Instance,
    pub busy_until: Option<Instant>,
    pub settle: Option<(Instant, InstanceState)>,
    /// The last operation accepted for it (`LatestOperation*`): a key-pair action, a
    /// stop or a start.
    pub operation: Option<Operation>,
}

impl LiveInstance {
    /// A busy window from the fleet file (an operation keyfleet did not start).
    pub(crate) fn is_busy(&self, now: Instant) -> bool {
        self.busy_until.is_some_and(|until| now < until)
    }

    /// An accepted operation on it has not completed yet.
    pub(crate) fn is_operating(&self, now: Instant) -> bool {
        self.operation
            .as_ref()
            .and_then(Operation::completes_at)
            .is_some_and(|at| now < at)
    }

    /// Carries out every step of its operation due by `now`, in order; a state change
    /// is recorded in `changes` at the step's own moment.
    fn complete_operation(&mut self, now: Instant, changes: &mut Vec<(Instant, PowerEvent)>) {
        let Some(op) = self.operation.as_mut() else {
            return;
        };
        while op.steps.front().is_some_and(|(at, _)| *at <= now) {
            let Some((at, step)) = op.steps.pop_front() else {
                break;
            };
            match step {
                Step::Power(state) => {
                    if self.spec.state != state {
                        self.spec.state = state;
                        // The operation owns the state now: a settle from the fleet
                        // file would undo it.
                        self.settle = None;
                        changes.push((
                            at,
                            PowerEvent::new(&self.spec, Some((op.action, &op.request_id))),
                        ));
                    }
                }
                Step::Keys { associate, keys } => {
                    let bound = &mut self.spec.key_ids;
                    if associate {
                        // Associate adds keys and never removes one (see the reference:
                        // never rely on it to remove a key), so a caller that does is
                        // caught here.
                        for key in keys {
                            if !bound.contains(&key) {
                                bound.push(key);
                            }
                        }
                    } else {
                        bound.retain(|k| !keys.contains(k));
                    }
                }
                Step::StopCharging(on) => self.spec.stop_charging = on,
                Step::End(state) => op.state = state,
            }
        }
    }

    /// Starts an accepted operation; its steps due at `now` happen at once.
    fn start_operation(
        &mut self,
        operation: Operation,
        now: Instant,
        changes: &mut Vec<(Instant, PowerEvent)>,
    ) {
        self.operation = Some(operation);
        self.complete_operation(now, changes);
    }

    /// The next moment something about it changes by itself, if any.
    fn next_event(&self) -> Option<Instant> {
        let operation = self
            .operation
            .as_ref()
            .and_then(|op| op.steps.front().map(|(at, _)| *at));
        [self.settle.map(|(at, _)| at), self.busy_until, operation]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The fleet the server reads and changes.
#[derive(Debug)]
pub(crate) struct LiveFleet {
    pub keys: BTreeSet<String>,
    /// Key pairs' details, launch templates and launch configurations.
    pub incident: Holdings,
    pub instances: Vec<LiveInstance>,
    by_id: HashMap<String, usize>,
    /// The earliest moment any instance changes by itself: until then `settle` has
    /// nothing to do (it used to walk every instance on every request).
    next_event: Option<Instant>,
    /// Every change of an instance's state, in time order (`SimHandle::power_timeline`).
    pub timeline: PowerTimeline,
}

impl LiveFleet {
    pub(crate) fn new(fleet: Fleet, start: Instant, default_settle: Duration) -> LiveFleet {
        let keys = fleet.all_keys();
        let incident = Holdings::new(
            fleet.key_pairs,
            fleet.launch_templates,
            fleet.launch_configurations,
        );
        let instances: Vec<LiveInstance> = fleet
            .instances
            .into_iter()
            .map(|mut spec| {
                let busy_until = spec
                    .busy_for_ms
                    .take()
                    .map(|ms| start + Duration::from_millis(ms));
                let target = spec
                    .settles_to
                    .take()
                    .or(spec.state.default_settle_target());
                let after = spec
                    .settle_after_ms
                    .take()
                    .map(Duration::from_millis)
                    .unwrap_or(default_settle);
                let settle = target.map(|to| (start + after, to));
                LiveInstance {
                    spec,
                    busy_until,
                    settle,
                    operation: None,
                }
            })
            .collect();
        let by_id = instances
            .iter()
            .enumerate()
            .map(|(n, i)| (i.spec.instance_id.clone(), n))
            .collect();
        let next_event = instances.iter().filter_map(LiveInstance::next_event).min();
        LiveFleet {
            keys,
            incident,
            instances,
            by_id,
            next_event,
            timeline: PowerTimeline::new(start),
        }
    }

    /// Starts an accepted operation on instance `n` (see `LiveInstance::start_operation`).
    pub(crate) fn start_operation(&mut self, n: usize, operation: Operation, now: Instant) {
        let mut changes = Vec::new();
        let instance = &mut self.instances[n];
        instance.start_operation(operation, now, &mut changes);
        if let Some(at) = instance.next_event() {
            self.next_event = Some(self.next_event.map_or(at, |t| t.min(at)));
        }
        self.timeline.record(changes);
    }

    /// Applies every state change due by `now`; each instance settles once.
    pub(crate) fn settle(&mut self, now: Instant) {
        if self.next_event.is_none_or(|at| now < at) {
            return;
        }
        let mut changes = Vec::new();
        for instance in &mut self.instances {
            if let Some((at, to)) = instance.settle
                && now >= at
            {
                if instance.spec.state != to {
                    instance.spec.state = to;
                    changes.push((at, PowerEvent::new(&instance.spec, None)));
                }
                instance.settle = None;
            }
            if instance.busy_until.is_some_and(|until| now >= until) {
                instance.busy_until = None;
            }
            instance.complete_operation(now, &mut changes);
        }
        self.timeline.record(changes);
        self.next_event = self
            .instances
            .iter()
            .filter_map(LiveInstance::next_event)
            .min();
    }

    /// Carries the operations and the power timeline of `previous` over to this fleet
    /// (after an edit at `now`, which rebuilds the fleet from a snapshot that holds
    /// neither); a state the edit changed is recorded as the fleet's own change.
    pub(crate) fn keep_operations(&mut self, previous: LiveFleet, now: Instant) {
        let mut changes = Vec::new();
        for old in previous.instances {
            let Some(&n) = self.by_id.get(&old.spec.instance_id) else {
                continue;
            };
            let instance = &mut self.instances[n];
            if instance.spec.state != old.spec.state {
                changes.push((now, PowerEvent::new(&instance.spec, None)));
            }
            if let Some(op) = old.operation {
                // A stop or start still running owns the state: the default settle of
                // the snapshot's STOPPING or STARTING must not race it.
                if op.completes_at().is_some()
                    && op.steps.iter().any(|(_, s)| matches!(s, Step::Power(_)))
                {
                    instance.settle = None;
                }
                instance.operation = Some(op);
            }
        }
        self.timeline = previous.timeline;
        self.timeline.record(changes);
        self.next_event = self
            .instances
            .iter()
            .filter_map(LiveInstance::next_event)
            .min();
    }

    /// The instance with this id in this region.
    pub(crate) fn find(&self, instance_id: &str, region: &str) -> Option<usize> {
        self.by_id
            .get(instance_id)
            .copied()
            .filter(|&n| self.instances[n].spec.region == region)
    }

    /// The fleet file form, with remaining busy and settle times measured from `now`.
    pub(crate) fn snapshot(&self, now: Instant) -> Fleet {
        let remaining = |at: Instant| duration_ms(at.saturating_duration_since(now));
        let instances = self
            .instances
            .iter()
            .map(|live| {
                let mut spec = live.spec.clone();
                spec.busy_for_ms = live.busy_until.filter(|&u| u > now).map(remaining);
                if let Some((at, to)) = live.settle {
                    spec.settles_to = Some(to);
                    spec.settle_after_ms = Some(remaining(at));
                }
                spec
            })
            .collect();
        Fleet {
            keys: self.keys.iter().cloned().collect(),
            instances,
            key_pairs: self.incident.key_pairs.values().cloned().collect(),
            launch_templates: self.incident.templates.clone(),
            launch_configurations: self.incident.configurations.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_mixed() {
        let a = Fleet::generate(500, 42, &Mix::default());
        let b = Fleet::generate(500, 42, &Mix::default());
        assert_eq!(a, b);
        assert_ne!(a, Fleet::generate(500, 43, &Mix::default()));
        assert!(a.validate().is_ok());
        let count = |f: &dyn Fn(&Instance) -> bool| a.instances.iter().filter(|i| f(i)).count();
        let stopped_linux = count(&|i| i.state == InstanceState::Stopped && i.os == Os::Linux);
        assert!(stopped_linux > 350, "{stopped_linux}");
        assert!(count(&|i| i.os == Os::Windows) > 0);
        assert!(count(&|i| i.state == InstanceState::Running) > 0);
        assert!(count(&|i| i.state == InstanceState::Shutdown) > 0);
        assert!(count(&|i| i.settles_to.is_some()) > 0);
        assert!(a.instances.iter().all(|i| !i.key_ids.is_empty()));
        assert_eq!(a.all_keys().len(), 12);
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = Fleet::from_json(
            r#"{"instances":[{"instance_id":"ins-00000001","region":"ap-guangzhou","os":"linux","state":"STOPPED","colour":"red"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        let err = Fleet::from_json(r#"{"instances":[],"extra":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
    }

    #[test]
    fn bad_values_are_positioned() {
        let err = Fleet::from_json(
            r#"{"instances":[{"instance_id":"ins-1122","region":"ap-guangzhou","os":"linux","state":"STOPPED"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("instances[0].instance_id"), "{err}");
        let err = Fleet::from_json(
            r#"{"instances":[{"instance_id":"ins-00000001","region":"ap-guangzhou","os":"linux","state":"NAPPING"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("NAPPING"), "{err}");
    }

    #[test]
    fn snapshot_round_trips() {
        let start = Instant::now();
        let fleet = Fleet::new()
            .with(Instance::new("ins-00000001", "ap-guangzhou").keys(["skey-00000001"]))
            .with(
                Instance::new("ins-00000002", "ap-guangzhou")
                    .state(InstanceState::Stopping)
                    .busy_for(Duration::from_secs(5)),
            );
        let live = LiveFleet::new(fleet, start, Duration::from_secs(2));
        let snap = live.snapshot(start);
        assert_eq!(snap.instances[1].settles_to, Some(InstanceState::Stopped));
        assert_eq!(snap.instances[1].settle_after_ms, Some(2000));
        assert_eq!(snap.instances[1].busy_for_ms, Some(5000));
        assert_eq!(Fleet::from_json(&snap.to_json_pretty()).unwrap(), snap);
    }

    #[test]
    fn the_live_mix_runs_over_three_zones_and_places_apart_from_the_rest() {
        let live = Fleet::generate(1000, 7, &Mix::live());
        assert_eq!(live, Fleet::generate(1000, 7, &Mix::live()));
        assert!(live.validate().is_ok());
        let running = live
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count();
        assert!((750..=850).contains(&running), "{running}");
        let zones: BTreeSet<String> = live.instances.iter().map(Instance::zone_name).collect();
        assert_eq!(
            zones.into_iter().collect::<Vec<_>>(),
            ["ap-guangzhou-3", "ap-guangzhou-4", "ap-guangzhou-6"]
        );
        assert!(
            live.instances
                .iter()
                .all(|i| i.tags.contains_key("service"))
        );
        // Zones and tags come from their own stream: without them, the same fleet.
        let unplaced = Fleet::generate(
            1000,
            7,
            &Mix {
                zones: Vec::new(),
                tags: Vec::new(),
                ..Mix::live()
            },
        );
        let mut stripped = live.clone();
        for instance in &mut stripped.instances {
            instance.zone = None;
            instance.tags.clear();
        }
        assert_eq!(stripped, unplaced);
        // The default fleet has none of them, so its files read as before.
        let default = Fleet::generate(50, 7, &Mix::default());
        assert!(
            default
                .instances
                .iter()
                .all(|i| i.zone.is_none() && i.tags.is_empty())
        );
        assert!(!default.to_json_pretty().contains("zone"));
    }

    #[test]
    fn a_zone_must_be_in_its_region() {
        let fleet = |zone: &str| {
            Fleet::new().with(Instance::new("ins-00000001", "ap-guangzhou").zone(zone))
        };
        assert!(fleet("ap-guangzhou-3").validate().is_ok());
        for bad in [
            "ap-shanghai-2",
            "ap-guangzhou",
            "ap-guangzhou-",
            "ap-guangzhou-3 x",
        ] {
            let err = fleet(bad).validate().unwrap_err().to_string();
            assert!(err.contains("instances[0].zone"), "{bad}: {err}");
        }
        let parsed = Fleet::from_json(
            r#"{"instances":[{"instance_id":"ins-00000001","region":"ap-guangzhou","os":"linux","state":"RUNNING","zone":"ap-guangzhou-4","tags":{"service":"web"},"soft_stop_fails":true,"start_fails":true}]}"#,
        )
        .unwrap();
        let instance = &parsed.instances[0];
        assert_eq!(instance.zone_name(), "ap-guangzhou-4");
        assert_eq!(instance.tags["service"], "web");
        assert!(instance.soft_stop_fails && instance.start_fails);
        assert_eq!(Fleet::from_json(&parsed.to_json_pretty()).unwrap(), parsed);
    }
}
