//! Chunking pairs into requests, and the compact ids the planner sorts by: a leaf
//! (it needs only [`crate::ids`]), used by the planner and by the store when an
//! outcome or a retry makes new jobs.
//!
//! Per region and operation options, instances that need the identical set of keys
//! form a group, and a group of I instances and K keys becomes ceil(I/100) x
//! ceil(K/100) jobs. The union of the jobs' cross products is exactly the set of
//! pairs given: a job never names a pair nobody asked for.

use std::collections::HashMap;

use crate::ids::MAX_IDS_PER_REQUEST;

/// Pairs one request can carry: 100 instances x 100 keys.
pub const MAX_PAIRS_PER_REQUEST: u64 = (MAX_IDS_PER_REQUEST * MAX_IDS_PER_REQUEST) as u64;

/// One valid pair, as the chunker takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairRef<'a> {
    pub region: &'a str,
    pub instance_id: &'a str,
    pub key_id: &'a str,
}

/// One request's worth of work: every key in `key_ids` off every instance in `instance_ids`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobSpec {
    pub region: String,
    pub force_stop: bool,
    /// Sorted, distinct, at most 100.
    pub instance_ids: Vec<String>,
    /// Sorted, distinct, at most 100.
    pub key_ids: Vec<String>,
}

impl JobSpec {
    /// Pairs this job covers.
    pub fn pair_count(&self) -> usize {
        self.instance_ids.len() * self.key_ids.len()
    }
}

/// The fewest requests that could carry `pairs` pairs: ceil(pairs / 10,000).
pub fn lower_bound(pairs: u64) -> u64 {
    pairs.div_ceil(MAX_PAIRS_PER_REQUEST)
}

/// Jobs for one group of `instances` instances that all need the same `keys` keys removed.
pub fn jobs_for_group(instances: u64, keys: u64) -> u64 {
    let per = MAX_IDS_PER_REQUEST as u64;
    instances.div_ceil(per) * keys.div_ceil(per)
}

/// Chunks pairs into jobs (duplicates are folded). Deterministic: the same set of
/// pairs in any order gives the same jobs in the same order (by region, then first instance).
///
/// Used by `plan` and again by `retry` for the pairs still to do.
pub fn chunk<'a>(pairs: impl IntoIterator<Item = PairRef<'a>>, force_stop: bool) -> Vec<JobSpec> {
    let pairs: Vec<PairRef<'a>> = pairs.into_iter().collect();
    // Ranks stand in for strings: sorted tables keep numeric order == string order.
    let table = |pick: fn(&PairRef<'a>) -> &'a str| {
        let mut names: Vec<&'a str> = pairs.iter().map(pick).collect();
        names.sort_unstable();
        names.dedup();
        names
    };
    let regions = table(|p| p.region);
    let instances = table(|p| p.instance_id);
    let keys = table(|p| p.key_id);
    let rank = |names: &[&str], name: &str| names.binary_search(&name).unwrap_or(0) as u64;
    let mut ranked: Vec<(u32, u64, u64)> = pairs
        .iter()
        .map(|p| {
            (
                rank(&regions, p.region) as u32,
                rank(&instances, p.instance_id),
                rank(&keys, p.key_id),
            )
        })
        .collect();
    ranked.sort_unstable();
    ranked.dedup();
    let (jobs, _) = chunk_sorted(&ranked);
    jobs.into_iter()
        .map(|job| JobSpec {
            region: regions[job.region as usize].to_string(),
            force_stop,
            instance_ids: job
                .instances
                .iter()
                .map(|&i| instances[i as usize].to_string())
                .collect(),
            key_ids: job
                .keys
                .iter()
                .map(|&k| keys[k as usize].to_string())
                .collect(),
        })
        .collect()
}

/// A job over ranked ids.
#[derive(Debug)]
pub(crate) struct RankedJob {
    pub(crate) region: u32,
    pub(crate) instances: Vec<u64>,
    pub(crate) keys: Vec<u64>,
}

/// The chunking itself, over sorted, distinct (region, instance, key) ranks.
/// Returns the jobs and, for each input pair, the index of the job covering it.
pub(crate) fn chunk_sorted(pairs: &[(u32, u64, u64)]) -> (Vec<RankedJob>, Vec<u32>) {
    struct Group {
        region: u32,
        keys: (usize, usize),
        instances: Vec<u64>,
    }
    let per = MAX_IDS_PER_REQUEST;
    let key_column: Vec<u64> = pairs.iter().map(|p| p.2).collect();
    // Each run of one (region, instance) is that instance's key set, already sorted.
    let runs = || {
        let mut start = 0;
        std::iter::from_fn(move || {
            if start >= pairs.len() {
                return None;
            }
            let (region, instance, _) = pairs[start];
            let end = start
                + pairs[start..]
                    .iter()
                    .take_while(|p| p.0 == region && p.1 == instance)
                    .count();
            let run = (start, end);
            start = end;
            Some(run)
        })
    };
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<(u32, &[u64]), u32> = HashMap::new();
    // Per run: its group and its place among the group's instances.
    let mut placement: Vec<(u32, u32)> = Vec::new();
    // The previous run's group, tried first: in an input sorted by instance, runs of
    // one key set follow each other, and comparing is cheaper than hashing.
    let mut last: Option<(u32, &[u64], u32)> = None;
    for (start, end) in runs() {
        let (region, instance, _) = pairs[start];
        let keys = &key_column[start..end];
        let g = match last {
            Some((r, k, g)) if r == region && k == keys => g,
            _ => *group_of.entry((region, keys)).or_insert_with(|| {
                groups.push(Group {
                    region,
                    keys: (start, end),
                    instances: Vec::new(),
                });
                (groups.len() - 1) as u32
            }),
        };
        last = Some((region, keys, g));
        let group = &mut groups[g as usize];
        placement.push((g, group.instances.len() as u32));
        group.instances.push(instance);
    }
    drop(group_of);
    let mut jobs = Vec::new();
    let mut first_job = Vec::with_capacity(groups.len());
    for group in &groups {
        first_job.push(jobs.len() as u32);
        let keys = &key_column[group.keys.0..group.keys.1];
        for instance_chunk in group.instances.chunks(per) {
            for key_chunk in keys.chunks(per) {
                jobs.push(RankedJob {
                    region: group.region,
                    instances: instance_chunk.to_vec(),
                    keys: key_chunk.to_vec(),
                });
            }
        }
    }
    let mut job_of_pair = vec![0u32; pairs.len()];
    for ((start, end), (g, place)) in runs().zip(placement) {
        let group = &groups[g as usize];
        let key_chunks = (group.keys.1 - group.keys.0).div_ceil(per) as u32;
        let base = first_job[g as usize] + (place / per as u32) * key_chunks;
        for (q, slot) in job_of_pair[start..end].iter_mut().enumerate() {
            *slot = base + (q / per) as u32;
        }
    }
    (jobs, job_of_pair)
}

// ---------------------------------------------------------------- compact ids

const ID_ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Packs the eight `[0-9a-z]` characters after a valid id's prefix; order-preserving.
pub(crate) fn pack_id(id: &str, prefix: &str) -> u64 {
    id[prefix.len()..].bytes().fold(0u64, |acc, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            _ => b - b'a' + 10,
        };
        acc * 36 + u64::from(digit)
    })
}

pub(crate) fn unpack_id(packed: u64, prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 8);
    unpack_id_into(packed, prefix, &mut id);
    id
}

/// [`unpack_id`] into a reused buffer.
pub(crate) fn unpack_id_into(mut packed: u64, prefix: &str, id: &mut String) {
    let mut suffix = [0u8; 8];
    for slot in suffix.iter_mut().rev() {
        *slot = ID_ALPHABET[(packed % 36) as usize];
        packed /= 36;
    }
    id.clear();
    id.push_str(prefix);
    // ASCII a character at a time: cheaper than checking eight bytes are UTF-8.
    id.extend(suffix.iter().map(|&b| char::from(b)));
}

pub(crate) const INSTANCE_PREFIX: &str = "ins-";
pub(crate) const KEY_PREFIX: &str = "skey-";
