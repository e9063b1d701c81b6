//! A fleet that changes while it is listed, as under Auto Scaling: instances are
//! created and terminated on a seeded schedule counted in listing pages served, so a
//! walk of `DescribeInstances` pages meets shifted offsets and changing `TotalCount`s.
//!
//! The schedule counts pages, not time: the same seed, fleet and requests give the
//! same changes however fast the client is. Only listing pages count (a
//! `DescribeInstances` without `InstanceIds`): a lookup by id changes nothing.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fleet::{Fleet, Instance};

/// How the fleet changes while it is listed (`keyfleet sim --churn-every N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Churn {
    /// One change in a region just before every `every`-th listing page of that
    /// region is served (at least 1).
    pub every: u32,
    /// Changes at most, over all regions; then the fleet stays still. `None`: no end.
    pub limit: Option<u32>,
}

/// Derives the schedule's own random stream from the simulator's seed, so turning
/// churn on changes no other seeded behaviour.
const CHURN_STREAM: u64 = 0xa54f_f53a_5f1d_36f1;

/// What one change did, for the journal of changes and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new instance, holding the keys of another instance of its region (as an
    /// Auto Scaling group launches from one configuration).
    Created { instance_id: String, region: String },
    /// An instance removed from the fleet.
    Terminated { instance_id: String, region: String },
}

/// The schedule's state: pages counted per region, changes made, its random stream.
#[derive(Debug)]
pub(crate) struct Schedule {
    churn: Churn,
    pages: HashMap<String, u32>,
    changes: Vec<Change>,
    rng: StdRng,
}

impl Schedule {
    pub(super) fn new(churn: Churn, seed: u64) -> Schedule {
        Schedule {
            churn,
            pages: HashMap::new(),
            changes: Vec::new(),
            rng: StdRng::seed_from_u64(seed ^ CHURN_STREAM),
        }
    }

    /// Counts a listing page of `region`; true when the fleet is to change first.
    pub(super) fn page(&mut self, region: &str) -> bool {
        if self
            .churn
            .limit
            .is_some_and(|limit| self.changes.len() >= limit as usize)
        {
            return false;
        }
        let count = self.pages.entry(region.to_string()).or_insert(0);
        *count += 1;
        (*count).is_multiple_of(self.churn.every.max(1))
    }

    /// Changes `fleet` in `region`: terminates one instance or creates one, at random.
    /// A region without instances stays empty (it may not be one the fleet serves).
    pub(super) fn change(&mut self, fleet: &mut Fleet, region: &str) -> Option<Change> {
        let members: Vec<usize> = (0..fleet.instances.len())
            .filter(|&n| fleet.instances[n].region == region)
            .collect();
        if members.is_empty() {
            return None;
        }
        let change = if self.rng.random_bool(0.5) {
            let n = members[self.rng.random_range(0..members.len())];
            let gone = fleet.instances.remove(n);
            Change::Terminated {
                instance_id: gone.instance_id,
                region: gone.region,
            }
        } else {
            let instance_id = loop {
                let id = random_instance_id(&mut self.rng);
                if !fleet.instances.iter().any(|i| i.instance_id == id) {
                    break id;
                }
            };
            let keys = fleet.instances[members[self.rng.random_range(0..members.len())]]
                .key_ids
                .clone();
            fleet
                .instances
                .push(Instance::new(instance_id.clone(), region).keys(keys));
            Change::Created {
                instance_id,
                region: region.to_string(),
            }
        };
        self.changes.push(change.clone());
        Some(change)
    }

    /// Every change so far, in order.
    pub(super) fn changes(&self) -> &[Change] {
        &self.changes
    }
}

/// `ins-` and 8 characters of 0-9a-z: anywhere in the id order, so a new instance
/// lands before, inside or after the pages already served.
fn random_instance_id(rng: &mut StdRng) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let suffix: String = (0..8)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("ins-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GZ: &str = "ap-guangzhou";

    fn fleet(n: usize) -> Fleet {
        (0..n).fold(Fleet::new(), |fleet, i| {
            fleet.with(Instance::new(format!("ins-{i:08x}"), GZ).keys(["skey-0000000a"]))
        })
    }

    #[test]
    fn changes_come_every_nth_page_of_a_region_up_to_the_limit() {
        let mut schedule = Schedule::new(
            Churn {
                every: 3,
                limit: Some(2),
            },
            7,
        );
        let due: Vec<bool> = (0..12).map(|_| schedule.page(GZ)).collect();
        // Without changes made, every third page is due; the limit counts changes.
        assert_eq!(due.iter().filter(|d| **d).count(), 4);
        assert!(!schedule.page("ap-shanghai") && !schedule.page("ap-shanghai"));
        assert!(
            schedule.page("ap-shanghai"),
            "each region counts its own pages"
        );
        let mut f = fleet(10);
        schedule.change(&mut f, GZ).unwrap();
        schedule.change(&mut f, GZ).unwrap();
        assert_eq!(schedule.changes().len(), 2);
        assert_eq!(
            schedule.change(&mut Fleet::new(), GZ),
            None,
            "no region, no change"
        );
        assert!((0..30).all(|_| !schedule.page(GZ)), "the limit is reached");
    }

    #[test]
    fn the_same_seed_makes_the_same_changes_and_new_instances_take_a_neighbours_keys() {
        let run = |seed| {
            let mut schedule = Schedule::new(
                Churn {
                    every: 1,
                    limit: None,
                },
                seed,
            );
            let mut f = fleet(20);
            let changes: Vec<Change> = (0..10)
                .map(|_| schedule.change(&mut f, GZ).unwrap())
                .collect();
            (changes, f)
        };
        let (a, fleet_a) = run(3);
        assert_eq!(a, run(3).0);
        assert_ne!(a, run(4).0);
        assert!(a.iter().any(|c| matches!(c, Change::Created { .. })));
        assert!(a.iter().any(|c| matches!(c, Change::Terminated { .. })));
        fleet_a.validate().unwrap();
        for instance in fleet_a.instances() {
            assert_eq!(instance.key_ids, ["skey-0000000a"]);
        }
    }
}
