//! Planning: input rows -> validated pairs -> jobs of at most 100 x 100, written durably.
//!
//! Every input pair becomes an item, in input order: valid (`pending`), a repeat of
//! an earlier valid pair (`duplicate`), or `rejected` with a reason. Valid pairs are
//! chunked by [`chunk`]: per region and operation options, instances that need the
//! identical set of keys removed form a group, and a group of I instances and K keys
//! becomes ceil(I/100) x ceil(K/100) jobs. The union of the jobs' cross products is
//! exactly the set of valid pairs: a job never unbinds a key nobody asked for.
//!
//! Memory for a million pairs stays compact: a valid id is `ins-`/`skey-` plus eight
//! characters of `[0-9a-z]`, which packs into a `u64` whose numeric order is the
//! string order, so no id string is held while planning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::chunk::{
    INSTANCE_PREFIX, KEY_PREFIX, RankedJob, chunk_sorted, pack_id, unpack_id, unpack_id_into,
};
pub use crate::chunk::{
    JobSpec, MAX_PAIRS_PER_REQUEST, PairRef, chunk, jobs_for_group, lower_bound,
};
use crate::cvm::Action;
use crate::ids::{self, MAX_IDS_PER_REQUEST};
use crate::input::{self, Field, Format, InputError, InputRow, Position, PositionKind, RowContent};
use crate::states::JobKind;
use crate::store::plan::{Begin, ItemStatus, NewItem, NewJob, NewRun, PlanJournal};
use crate::store::report::RunSummary;
use crate::store::{Store, StoreError};

mod write;

use write::{position_of, write};

/// Rejections listed in a strict refusal's message.
const STRICT_EXAMPLES: usize = 5;
/// Pairs one set row (`{"InstanceIds": [...], "KeyIds": [...]}`) may expand to, in
/// pairs: ten full requests. A bigger row is rejected whole, as one item, before it
/// is expanded: 1,000 x 1,000 ids in a 30 KB row would otherwise be a million items
/// (383 MB in the audit). Sets of a few hundred ids each stay usable.
pub const MAX_PAIRS_PER_SET_ROW: u64 = 10 * MAX_PAIRS_PER_REQUEST;
/// Rejected pairs one input may hold, in pairs. Past it the input is refused whole
/// as unreadable (exit 2, nothing written): it is not the fleet list it claims to be,
/// and each rejection keeps up to three 40-character texts in memory and in the database.
pub const MAX_REJECTED_PAIRS_PER_INPUT: u64 = 100_000;

/// Options that shape a plan. With the input's SHA-256, they identify a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Region for rows that carry none (`--region`).
    pub default_region: Option<String>,
    /// Pass `ForceStop=true`: running instances are stopped, then started again.
    pub force_stop: bool,
    /// Refuse the whole input if any row is rejected.
    pub strict: bool,
    /// Input format; `None` takes it from the extension (or the first character).
    pub format: Option<Format>,
    /// Look at every instance of a plain unbind first (DescribeInstances) and skip the
    /// pairs whose removal would leave it with no key (`--keep-one-key`).
    pub keep_one_key: bool,
    /// A live run (`--running stop-start|force-stop`): RUNNING instances go through
    /// their key steps under a downtime budget ([`crate::rules::power`]).
    pub live: Option<crate::rules::power::Live>,
    /// The account the run is for (`--account`, [`crate::accounts`]): stored with the
    /// run's options, so that a later command on it must work as the same account.
    pub account: Option<String>,
}

impl PlanOptions {
    /// The input column `--max-down-per COLUMN` names, if the budget is per column.
    pub fn group_column(&self) -> Option<&str> {
        match self.live.as_ref()?.per.as_ref()? {
            crate::rules::power::Per::Column(column) => Some(column),
            _ => None,
        }
    }
}

/// Planning failures. A bad row is not one of them: it becomes a rejected item.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The input cannot be read (the message names file, line and column).
    #[error(transparent)]
    Input(#[from] InputError),
    /// `--region` is not a region name.
    #[error("--region {0:?} is not a region name like ap-guangzhou")]
    BadDefaultRegion(String),
    /// `--strict` and some rows were rejected; nothing was written.
    #[error("--strict: {count} input pair(s) rejected, so nothing was written; first: {examples}")]
    Strict { count: u64, examples: String },
    /// More than [`MAX_REJECTED_PAIRS_PER_INPUT`] rejected pairs; nothing was written.
    #[error(
        "{file}: more than {max} input pairs rejected, so this is not read as a fleet list and nothing was written; \
         check its format and columns by planning its first lines alone (head -n 1000)",
        max = MAX_REJECTED_PAIRS_PER_INPUT
    )]
    TooManyRejected { file: String },
    /// More items than a plan can index (over four billion).
    #[error("the input expands to more than {max} pairs; split it", max = u32::MAX)]
    TooLarge,
    /// `--max-down-per COLUMN`: a row without the column, or an instance given two
    /// values of it; nothing was written.
    #[error("--max-down-per {column}: {problem}")]
    Group { column: String, problem: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

// ---------------------------------------------------------------- building

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Valid,
    Duplicate,
    Rejected,
}

/// One input pair, compact: 48 bytes, whatever the row looked like.
#[derive(Debug, Clone, Copy)]
struct Item {
    row: u64,
    instance: u64,
    key: u64,
    /// Valid: job index ([`HELD`]: none yet); Duplicate: item index of the first;
    /// Rejected: index into `rejections`.
    link: u32,
    pair: u32,
    region: u32,
    /// A rotation row: index into `Builder::new_key_sets` (0: a plain unbind).
    new_keys: u32,
    kind: Kind,
}

/// The `link` of a valid item that waits for its instance (rotation, --keep-one-key).
const HELD: u32 = u32::MAX;

/// One (instance, new key) pair a rotation binds: the item it becomes.
#[derive(Debug, Clone, Copy)]
struct BindItem {
    region: u32,
    instance: u64,
    key: u64,
    /// Where the first row that asks for it is.
    row: u64,
    pair: u32,
    /// Index into `Built::bind_jobs`.
    job: u32,
}

#[derive(Debug)]
struct RejectedPair {
    region: Option<String>,
    account: Option<String>,
    instance_id: Option<String>,
    key_id: Option<String>,
    reason: String,
}

/// A plan in memory, ready to write.
#[derive(Debug)]
struct Built {
    sha256: String,
    format: Format,
    rows: u64,
    position_kind: PositionKind,
    /// Each route's region: an item's or job's `region` is an index into this and
    /// `accounts` (a route is an (account, region): jobs never mix two).
    regions: Vec<String>,
    /// Each route's account (`None`: the run's own).
    accounts: Vec<Option<String>>,
    items: Vec<Item>,
    rejections: Vec<RejectedPair>,
    /// Disassociate jobs of the pairs that are not held.
    jobs: Vec<RankedJob>,
    /// Associate jobs of a rotation's new keys, and the bind items they cover.
    bind_jobs: Vec<RankedJob>,
    bind_items: Vec<BindItem>,
    /// The new-key sets rotation rows name, packed (index 0: none).
    new_key_sets: Vec<Vec<u64>>,
    /// `--keep-one-key`: (region, instances) of each look before unbinding.
    prechecks: Vec<(u32, Vec<u64>)>,
    /// Instances the input's `keys_after` says a plain unbind leaves keyless.
    keyless: Option<u64>,
    /// Instances the input's `instance_state` says are RUNNING.
    running: Option<u64>,
    /// `--max-down-per COLUMN`: each instance's value of the column.
    groups: Vec<(String, String)>,
    pairs: u64,
    duplicates: u64,
    instances: u64,
    keys: u64,
}

struct Builder {
    default_region: Option<String>,
    /// Instances a plain unbind leaves with no key, by the input's own `keys_after`.
    keyless: std::collections::HashSet<String>,
    saw_keys_after: bool,
    /// Instances the input's `instance_state` column says are RUNNING.
    running: std::collections::HashSet<String>,
    saw_state: bool,
    /// `--max-down-per COLUMN`: the column, each instance's value of it, and the first
    /// row that lacks it or gives an instance a second value.
    group_column: Option<String>,
    groups: HashMap<String, String>,
    group_problem: Option<String>,
    new_key_sets: Vec<Vec<u64>>,
    new_key_set_ids: HashMap<Vec<u64>, u32>,
    routes: Routes,
    items: Vec<Item>,
    rejections: Vec<RejectedPair>,
    too_large: bool,
    too_many_rejected: bool,
}

/// The routes (account, region) of a plan's valid pairs, each an index into
/// `regions` and `accounts`.
#[derive(Default)]
struct Routes {
    /// Routes of the run's own account, by region.
    region_ids: HashMap<String, u32>,
    /// Routes of a named account, by (account, region).
    account_route_ids: HashMap<(String, String), u32>,
    regions: Vec<String>,
    accounts: Vec<Option<String>>,
    /// The route [`Routes::intern`] returned last.
    last: Option<u32>,
}

impl Routes {
    /// The route of a valid pair. The run's own account looks up by region alone (no
    /// allocation per row).
    fn intern(&mut self, account: Option<&str>, region: &str) -> u32 {
        // Rows of one route mostly follow each other: the last one is tried first.
        if let Some(last) = self.last
            && self.regions[last as usize] == region
            && self.accounts[last as usize].as_deref() == account
        {
            return last;
        }
        let id = self.lookup(account, region);
        self.last = Some(id);
        id
    }

    fn lookup(&mut self, account: Option<&str>, region: &str) -> u32 {
        let found = match account {
            None => self.region_ids.get(region).copied(),
            Some(account) => self
                .account_route_ids
                .get(&(account.to_string(), region.to_string()))
                .copied(),
        };
        if let Some(id) = found {
            return id;
        }
        let id = self.regions.len() as u32;
        self.regions.push(region.to_string());
        self.accounts.push(account.map(str::to_string));
        match account {
            None => self.region_ids.insert(region.to_string(), id),
            Some(account) => self
                .account_route_ids
                .insert((account.to_string(), region.to_string()), id),
        };
        id
    }
}

impl Builder {
    /// `--max-down-per COLUMN`: records the instance's value of the column; the first
    /// row without it, or giving the instance another value, is the plan's error.
    fn note_group(&mut self, position: Position, instance: &str, group: Option<&str>) {
        let Some(column) = &self.group_column else {
            return;
        };
        if self.group_problem.is_some() {
            return;
        }
        let Some(group) = group else {
            self.group_problem = Some(format!("{position} has no {column} value"));
            return;
        };
        match self.groups.get(instance) {
            Some(earlier) if earlier != group => {
                self.group_problem = Some(format!(
                    "{position} puts {} in {column} {:?}, an earlier row in {:?}; one instance \
                     has one budget group",
                    crate::ids::shorten(instance),
                    crate::ids::shorten(group),
                    crate::ids::shorten(earlier)
                ));
            }
            Some(_) => {}
            None => {
                self.groups.insert(instance.to_string(), group.to_string());
            }
        }
    }

    fn add_row(&mut self, row: InputRow) {
        match &row.content {
            RowContent::Invalid { reason } => {
                self.reject(row.position, None, None, None, None, reason.clone());
            }
            RowContent::Pair {
                instance_id,
                key_id,
                region,
                account,
                new_key_ids,
                keys_after,
                state,
                group,
            } => {
                if let Some(state) = state {
                    self.saw_state = true;
                    if state == "RUNNING"
                        && let Ok(id) = instance_id
                    {
                        self.running.insert(id.clone());
                    }
                }
                if let Ok(id) = instance_id {
                    self.note_group(row.position, id, group.as_deref());
                }
                if let Some(after) = keys_after {
                    self.saw_keys_after = true;
                    if *after == 0
                        && new_key_ids.is_empty()
                        && let Ok(id) = instance_id
                    {
                        self.keyless.insert(id.clone());
                    }
                }
                self.add_pair(
                    row.position,
                    instance_id,
                    key_id,
                    region.as_ref(),
                    account.as_ref(),
                    new_key_ids,
                )
            }
            RowContent::Set {
                instance_ids,
                key_ids,
                region,
                account,
                new_key_ids,
                group,
            } => {
                for id in instance_ids.iter().flatten() {
                    self.note_group(row.position, id, group.as_deref());
                }
                let pairs = (instance_ids.len() as u64).saturating_mul(key_ids.len() as u64);
                if pairs > MAX_PAIRS_PER_SET_ROW {
                    let region = region
                        .as_ref()
                        .and_then(|r| r.as_ref().ok())
                        .map(|r| ids::shorten(r));
                    let account = account
                        .as_ref()
                        .and_then(|a| a.as_ref().ok())
                        .map(|a| ids::shorten(a));
                    self.reject(
                        row.position,
                        region,
                        account,
                        None,
                        None,
                        format!(
                            "the set expands to {pairs} pairs ({} instances x {} keys), more than \
                             {MAX_PAIRS_PER_SET_ROW} per row; split it into smaller sets",
                            instance_ids.len(),
                            key_ids.len()
                        ),
                    );
                    return;
                }
                let mut n = 0u32;
                for instance_id in instance_ids {
                    for key_id in key_ids {
                        n = n.saturating_add(1);
                        self.add_pair(
                            row.position.with_pair(n),
                            instance_id,
                            key_id,
                            region.as_ref(),
                            account.as_ref(),
                            new_key_ids,
                        );
                    }
                }
            }
        }
    }

    fn add_pair(
        &mut self,
        position: Position,
        instance_id: &Field,
        key_id: &Field,
        region: Option<&Field>,
        account: Option<&Field>,
        new_key_ids: &[Field],
    ) {
        let mut reasons = Vec::new();
        let account: Option<&str> = match account {
            Some(Ok(name)) if crate::accounts::is_account_name(name) => Some(name),
            Some(Ok(name)) => {
                reasons.push(format!(
                    "account {:?} is not an account name (letters, digits, '-' and '_', as in \
                     the accounts file)",
                    ids::shorten(name)
                ));
                Some(name)
            }
            Some(Err(why)) => {
                reasons.push(why.clone());
                None
            }
            None => None,
        };
        match instance_id {
            Ok(id) => reasons.extend(ids::instance_id_problem(id)),
            Err(why) => reasons.push(why.clone()),
        }
        match key_id {
            Ok(id) => reasons.extend(ids::key_id_problem(id)),
            Err(why) => reasons.push(why.clone()),
        }
        let mut new_keys = Vec::with_capacity(new_key_ids.len());
        for new_key in new_key_ids {
            match new_key {
                Ok(id) => match ids::key_id_problem(id) {
                    Some(problem) => reasons.push(format!("new_key_id: {problem}")),
                    None if key_id.as_ref().is_ok_and(|k| k == id) => reasons.push(format!(
                        "new_key_id {id} is the key_id itself: binding and then unbinding it \
                         would leave the instance without it"
                    )),
                    None => new_keys.push(pack_id(id, KEY_PREFIX)),
                },
                Err(why) => reasons.push(format!("new_key_id: {why}")),
            }
        }
        let region: Option<&str> = match region {
            Some(Ok(name)) if ids::is_region(name) => Some(name),
            Some(Ok(name)) => {
                reasons.push(format!(
                    "region {:?} is not a region name like ap-guangzhou",
                    ids::shorten(name)
                ));
                Some(name)
            }
            Some(Err(why)) => {
                reasons.push(why.clone());
                None
            }
            None => match &self.default_region {
                Some(name) => Some(name.as_str()),
                None => {
                    reasons.push("no region: the row has none and --region was not given".into());
                    None
                }
            },
        };
        if !reasons.is_empty() {
            let text = |field: &Field| field.as_ref().ok().map(|s| ids::shorten(s));
            let region = region.map(ids::shorten);
            let account = account.map(ids::shorten);
            self.reject(
                position,
                region,
                account,
                text(instance_id),
                text(key_id),
                reasons.join("; "),
            );
            return;
        }
        let (Ok(instance_id), Ok(key_id), Some(region)) = (instance_id, key_id, region) else {
            return;
        };
        let region = self.routes.intern(account, region);
        let new_keys = self.intern_new_keys(new_keys);
        self.push(Item {
            row: position.row,
            instance: pack_id(instance_id, INSTANCE_PREFIX),
            key: pack_id(key_id, KEY_PREFIX),
            link: 0,
            pair: position.pair,
            region,
            new_keys,
            kind: Kind::Valid,
        });
    }

    /// The index of a new-key set (sorted, distinct), 0 for none.
    fn intern_new_keys(&mut self, mut keys: Vec<u64>) -> u32 {
        if keys.is_empty() {
            return 0;
        }
        keys.sort_unstable();
        keys.dedup();
        if let Some(&id) = self.new_key_set_ids.get(&keys) {
            return id;
        }
        let id = self.new_key_sets.len() as u32;
        self.new_key_sets.push(keys.clone());
        self.new_key_set_ids.insert(keys, id);
        id
    }

    fn reject(
        &mut self,
        position: Position,
        region: Option<String>,
        account: Option<String>,
        instance_id: Option<String>,
        key_id: Option<String>,
        reason: String,
    ) {
        if self.rejections.len() as u64 >= MAX_REJECTED_PAIRS_PER_INPUT {
            // Refused at the end; nothing more is kept meanwhile.
            self.too_many_rejected = true;
            return;
        }
        let link = self.rejections.len() as u32;
        self.rejections.push(RejectedPair {
            region,
            account,
            instance_id,
            key_id,
            reason,
        });
        self.push(Item {
            row: position.row,
            instance: 0,
            key: 0,
            link,
            pair: position.pair,
            region: 0,
            new_keys: 0,
            kind: Kind::Rejected,
        });
    }

    fn push(&mut self, item: Item) {
        if self.too_many_rejected {
            return;
        }
        if self.items.len() >= u32::MAX as usize {
            self.too_large = true;
            return;
        }
        self.items.push(item);
    }
}

/// Reads and plans the whole input in memory. Blocking: reads the file.
fn build(path: &Path, options: &PlanOptions) -> Result<Built, PlanError> {
    let keep_one_key = options.keep_one_key;
    let group_column = options.group_column().map(str::to_string);
    let mut builder = Builder {
        default_region: options.default_region.clone(),
        keyless: Default::default(),
        saw_keys_after: false,
        running: Default::default(),
        saw_state: false,
        group_column: group_column.clone(),
        groups: HashMap::new(),
        group_problem: None,
        new_key_sets: vec![Vec::new()],
        new_key_set_ids: HashMap::new(),
        routes: Routes::default(),
        items: Vec::new(),
        rejections: Vec::new(),
        too_large: false,
        too_many_rejected: false,
    };
    let digest = input::read_input(path, options.format, group_column.as_deref(), |row| {
        builder.add_row(row)
    })?;
    if let (Some(column), Some(problem)) = (&group_column, builder.group_problem.take()) {
        return Err(PlanError::Group {
            column: column.clone(),
            problem,
        });
    }
    if builder.too_many_rejected {
        return Err(PlanError::TooManyRejected {
            file: input::display_name(path),
        });
    }
    if builder.too_large {
        return Err(PlanError::TooLarge);
    }
    let Builder {
        routes: Routes {
            mut regions,
            mut accounts,
            ..
        },
        mut items,
        mut rejections,
        new_key_sets,
        keyless,
        saw_keys_after,
        running,
        saw_state,
        groups,
        ..
    } = builder;
    let position_kind = match digest.format {
        Format::Json => PositionKind::Index,
        Format::Csv | Format::Jsonl => PositionKind::Line,
    };
    let position = |item: &Item| Position {
        kind: position_kind,
        row: item.row,
        pair: item.pair,
    };
    let key_list = |set: u32| {
        new_key_sets[set as usize]
            .iter()
            .map(|&k| unpack_id(k, KEY_PREFIX))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Routes in (account, region) order, so jobs come out in the same order whatever
    // the row order.
    let mut by_name: Vec<u32> = (0..regions.len() as u32).collect();
    by_name.sort_by(|&a, &b| {
        let route = |r: u32| (&accounts[r as usize], &regions[r as usize]);
        route(a).cmp(&route(b))
    });
    let mut new_rank = vec![0u32; regions.len()];
    for (rank, &old) in by_name.iter().enumerate() {
        new_rank[old as usize] = rank as u32;
    }
    regions = by_name
        .iter()
        .map(|&old| regions[old as usize].clone())
        .collect();
    accounts = by_name
        .iter()
        .map(|&old| accounts[old as usize].clone())
        .collect();
    for item in items.iter_mut().filter(|i| i.kind == Kind::Valid) {
        item.region = new_rank[item.region as usize];
    }

    let mut order: Vec<u32> = (0..items.len() as u32)
        .filter(|&i| items[i as usize].kind == Kind::Valid)
        .collect();
    order.sort_unstable_by_key(|&i| {
        let item = &items[i as usize];
        (item.region, item.instance, item.key, i)
    });
    let mut unique: Vec<(u32, u64, u64)> = Vec::with_capacity(order.len());
    let mut first_item: Vec<u32> = Vec::with_capacity(order.len());
    let mut duplicates = 0u64;
    let mut reject = |items: &mut Vec<Item>, i: u32, reason: String| {
        let item = &mut items[i as usize];
        let text = |packed: u64, prefix: &str| Some(unpack_id(packed, prefix));
        item.link = rejections.len() as u32;
        item.kind = Kind::Rejected;
        rejections.push(RejectedPair {
            region: Some(regions[item.region as usize].clone()),
            account: accounts[item.region as usize].clone(),
            instance_id: text(item.instance, INSTANCE_PREFIX),
            key_id: text(item.key, KEY_PREFIX),
            reason,
        });
    };
    for &i in &order {
        let item = items[i as usize];
        let triple = (item.region, item.instance, item.key);
        if unique.last() == Some(&triple) {
            let first = *first_item.last().unwrap_or(&i);
            let asked = items[first as usize].new_keys;
            if item.new_keys != asked {
                // The same pair, rotated to other keys (or not at all): which was meant
                // is the operator's to say.
                let earlier = match asked {
                    0 => "unbinds it without a new key".to_string(),
                    set => format!("rotates it to {}", key_list(set)),
                };
                let reason = format!(
                    "conflicts with {}, which {earlier}; keep one of the two rows",
                    position(&items[first as usize])
                );
                reject(&mut items, i, reason);
                continue;
            }
            let dup = &mut items[i as usize];
            dup.kind = Kind::Duplicate;
            dup.link = first;
            duplicates += 1;
        } else {
            unique.push(triple);
            first_item.push(i);
        }
    }
    drop(order);

    // Per instance (a run of `unique`): the new keys its rotation rows bind; a new key
    // that the same input also removes from it is a contradiction, rejected.
    let mut keep = vec![true; unique.len()];
    let mut rotating: Vec<(u32, u64, Vec<u64>, usize)> = Vec::new();
    let mut start = 0;
    while start < unique.len() {
        let (region, instance, _) = unique[start];
        let end = start
            + unique[start..]
                .iter()
                .take_while(|p| p.0 == region && p.1 == instance)
                .count();
        let removed = |key: &u64| unique[start..end].iter().any(|p| p.2 == *key);
        let mut bound: Vec<u64> = Vec::new();
        for n in start..end {
            let item = items[first_item[n] as usize];
            let set = &new_key_sets[item.new_keys as usize];
            if let Some(&clash) = set.iter().find(|k| removed(k)) {
                reject(
                    &mut items,
                    first_item[n],
                    format!(
                        "new key {} is also to be removed from {} by this input",
                        unpack_id(clash, KEY_PREFIX),
                        unpack_id(instance, INSTANCE_PREFIX)
                    ),
                );
                keep[n] = false;
                continue;
            }
            bound.extend_from_slice(set);
        }
        bound.sort_unstable();
        bound.dedup();
        if !bound.is_empty() {
            rotating.push((region, instance, bound, start));
        }
        start = end;
    }
    let (unique, first_item): (Vec<_>, Vec<_>) = unique
        .into_iter()
        .zip(first_item)
        .zip(keep)
        .filter_map(|(pair, keep)| keep.then_some(pair))
        .unzip();

    // Held: every pair of a rotating instance (it waits for its new keys), and with
    // --keep-one-key every other pair (it waits for the look at its instance).
    let is_rotating = |region: u32, instance: u64| {
        rotating
            .binary_search_by(|r| (r.0, r.1).cmp(&(region, instance)))
            .is_ok()
    };
    let mut now: Vec<(u32, u64, u64)> = Vec::with_capacity(unique.len());
    let mut now_items: Vec<u32> = Vec::with_capacity(unique.len());
    let mut prechecks: Vec<(u32, Vec<u64>)> = Vec::new();
    for (&pair, &i) in unique.iter().zip(&first_item) {
        let (region, instance, _) = pair;
        if is_rotating(region, instance) {
            items[i as usize].link = HELD;
        } else if keep_one_key {
            items[i as usize].link = HELD;
            match prechecks.last_mut() {
                Some((r, batch))
                    if *r == region
                        && (batch.last() == Some(&instance)
                            || batch.len() < MAX_IDS_PER_REQUEST) =>
                {
                    if batch.last() != Some(&instance) {
                        batch.push(instance);
                    }
                }
                _ => prechecks.push((region, vec![instance])),
            }
        } else {
            now.push(pair);
            now_items.push(i);
        }
    }
    let (jobs, job_of_pair) = chunk_sorted(&now);
    for (&i, &job) in now_items.iter().zip(&job_of_pair) {
        items[i as usize].link = job;
    }
    // The bind pairs: per rotating instance, each new key once, placed at the first
    // row that asks for it.
    let mut bind_pairs: Vec<(u32, u64, u64)> = Vec::new();
    let mut bind_items: Vec<BindItem> = Vec::new();
    for (region, instance, bound, start) in &rotating {
        for &key in bound {
            let origin = unique[*start..]
                .iter()
                .zip(&first_item[*start..])
                .take_while(|(p, _)| p.0 == *region && p.1 == *instance)
                .map(|(_, &i)| items[i as usize])
                .filter(|item| new_key_sets[item.new_keys as usize].contains(&key))
                .min_by_key(|item| (item.row, item.pair));
            let Some(origin) = origin else { continue };
            bind_pairs.push((*region, *instance, key));
            bind_items.push(BindItem {
                region: *region,
                instance: *instance,
                key,
                row: origin.row,
                pair: origin.pair,
                job: 0,
            });
        }
    }
    let (bind_jobs, bind_job_of_pair) = chunk_sorted(&bind_pairs);
    for (item, job) in bind_items.iter_mut().zip(bind_job_of_pair) {
        item.job = job;
    }
    let count_distinct = |mut values: Vec<(u32, u64)>| {
        values.sort_unstable();
        values.dedup();
        values.len() as u64
    };
    let instances = count_distinct(unique.iter().map(|p| (p.0, p.1)).collect());
    let keys = count_distinct(unique.iter().map(|p| (p.0, p.2)).collect());
    Ok(Built {
        sha256: digest.sha256,
        format: digest.format,
        rows: digest.rows,
        position_kind,
        regions,
        accounts,
        items,
        rejections,
        jobs,
        bind_jobs,
        bind_items,
        new_key_sets,
        prechecks,
        keyless: saw_keys_after.then_some(keyless.len() as u64),
        running: saw_state.then_some(running.len() as u64),
        groups: {
            let mut groups: Vec<(String, String)> = groups.into_iter().collect();
            groups.sort();
            groups
        },
        pairs: unique.len() as u64,
        duplicates,
        instances,
        keys,
    })
}

/// The canonical JSON of options stored in `runs.options`: fixed key order, the
/// format as actually read (so `--format csv` on a `.csv` file is the same run).
fn canonical_options(options: &PlanOptions, format: Format, accounts: &[&str]) -> String {
    let mut json = serde_json::json!({
        "default_region": options.default_region,
        "force_stop": options.force_stop,
        "format": format.as_str(),
        "strict": options.strict,
    });
    // Only when set: runs planned before the option existed keep their identity.
    if options.keep_one_key {
        json["keep_one_key"] = serde_json::Value::Bool(true);
    }
    if let Some(live) = &options.live {
        json["live"] = serde_json::to_value(live).unwrap_or_default();
    }
    if let Some(account) = &options.account {
        json["account"] = serde_json::Value::String(account.clone());
    }
    // The accounts the rows name (an `account` column), which every command working
    // on the run needs a client for.
    if !accounts.is_empty() {
        json["accounts"] = serde_json::json!(accounts);
    }
    json.to_string()
}

/// What `plan` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanOutcome {
    /// True when the same input with the same options had already been planned:
    /// that run is returned and nothing new was written.
    pub existing: bool,
    #[serde(flatten)]
    pub summary: RunSummary,
    /// ceil(pairs / 10,000): no plan can take fewer requests.
    pub lower_bound: u64,
    /// Instances a plain unbind would leave with no key, by the input's `keys_after`
    /// column (`discover` writes it); `None` when the input does not say.
    pub keyless_after: Option<u64>,
    /// Instances the input's `instance_state` column says are RUNNING: the ones a
    /// live run stops under its budget (`--running fail` fails their pairs); `None`
    /// when the input does not say (a live run's survey finds out).
    pub running: Option<u64>,
}

/// Plans `path` (`-` for stdin) into `store`, or finds the run that already planned it.
pub async fn plan_input(
    store: &Store,
    path: &Path,
    options: &PlanOptions,
) -> Result<PlanOutcome, PlanError> {
    if let Some(region) = &options.default_region
        && !ids::is_region(region)
    {
        return Err(PlanError::BadDefaultRegion(region.clone()));
    }
    let started = std::time::Instant::now();
    let mut built = {
        let path = path.to_path_buf();
        let options = options.clone();
        match tokio::task::spawn_blocking(move || build(&path, &options)).await {
            Ok(built) => built?,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    };
    let rejected = built.rejections.len() as u64;
    let keyless_after = built.keyless;
    let running = built.running;
    let groups = std::mem::take(&mut built.groups);
    tracing::info!(
        rows = built.rows,
        pairs = built.pairs,
        rejected,
        jobs = built.jobs.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "input read and planned in memory"
    );
    if options.strict && rejected > 0 {
        let examples = built
            .items
            .iter()
            .filter(|i| i.kind == Kind::Rejected)
            .take(STRICT_EXAMPLES)
            .map(|i| {
                format!(
                    "{}: {}",
                    position_of(&built, i),
                    built.rejections[i.link as usize].reason
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(PlanError::Strict {
            count: rejected,
            examples,
        });
    }
    let named: Vec<&str> = {
        let mut named: Vec<&str> = built
            .accounts
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        named.sort_unstable();
        named.dedup();
        named
    };
    let options_json = canonical_options(options, built.format, &named);
    let input_path = stored_input_path(path);
    // A new run's pages written once, when nothing else has the database open
    // (store::plan's `Alone`); else through the WAL.
    let alone = store.claim_for_plan().await?;
    let writing = {
        let store = store.clone();
        let force_stop = options.force_stop;
        // SQLite calls block: the whole write runs on a blocking thread, `built` moved in.
        tokio::task::spawn_blocking(move || -> Result<(i64, Option<PlanJournal>), PlanError> {
            let run = NewRun {
                input_path: &input_path,
                input_sha256: &built.sha256,
                options: &options_json,
                rows_read: built.rows,
                pairs: built.pairs,
                duplicates: built.duplicates,
                rejected,
                instances: built.instances,
                keys: built.keys,
                regions: {
                    let mut names: Vec<&String> = built.regions.iter().collect();
                    names.sort_unstable();
                    names.dedup();
                    names.len() as u64
                },
            };
            match store.begin_plan_alone(&run, alone)? {
                Begin::Existing(id) => Ok((id, None)),
                Begin::New(writer) => {
                    let journal = writer.journal();
                    Ok((write(writer, built, force_stop)?, Some(journal)))
                }
            }
        })
    };
    let (run_id, journal) = match writing.await {
        Ok(written) => written?,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    };
    let existing = journal.is_none();
    if let Some(journal) = journal {
        tracing::info!(
            run_id,
            ?journal,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plan committed"
        );
    }
    // The budget groups of `--max-down-per COLUMN`, written again for an existing
    // run (idempotent), so a crash between the plan and them is healed by the same
    // command before anything is sent.
    if !groups.is_empty() {
        store.record_groups(run_id, &groups).await?;
    }
    let summary = store.run_summary(run_id).await?;
    let lower_bound = lower_bound(summary.pairs.max(0) as u64);
    Ok(PlanOutcome {
        existing,
        summary,
        lower_bound,
        keyless_after,
        running,
    })
}

fn stored_input_path(path: &Path) -> String {
    if path.as_os_str() == input::STDIN_PATH {
        return input::STDIN_PATH.to_string();
    }
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Whether a run's input file still holds what was planned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "input")]
pub enum InputCheck {
    /// Same SHA-256 as when planned.
    Unchanged,
    /// The file now hashes differently: it was edited after planning.
    Changed {
        path: PathBuf,
        planned_sha256: String,
        current_sha256: String,
    },
    /// The file is gone or unreadable.
    Missing { path: PathBuf, error: String },
    /// The plan was read from standard input: nothing to compare.
    Stdin,
}

/// Compares a run's input file with the SHA-256 recorded when it was planned.
/// Call on resume: a run whose input has since changed must be reported, never mixed.
pub async fn check_input(store: &Store, run_id: i64) -> Result<InputCheck, StoreError> {
    let (path, planned) = store.run_input(run_id).await?;
    if path == input::STDIN_PATH {
        return Ok(InputCheck::Stdin);
    }
    let path = PathBuf::from(path);
    let hashed = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || input::sha256_file(&path)).await
    };
    Ok(match hashed {
        Ok(Ok(current)) if current == planned => InputCheck::Unchanged,
        Ok(Ok(current)) => InputCheck::Changed {
            path,
            planned_sha256: planned,
            current_sha256: current,
        },
        Ok(Err(err)) => InputCheck::Missing {
            path,
            error: err.to_string(),
        },
        Err(join) => InputCheck::Missing {
            path,
            error: join.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::write::items_in_index_order;
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    #[test]
    fn packed_ids_round_trip_and_keep_order() {
        let a = "ins-0000000a";
        let b = "ins-00000010";
        let z = "ins-zzzzzzzz";
        for id in [a, b, z, "ins-00000000"] {
            assert_eq!(unpack_id(pack_id(id, INSTANCE_PREFIX), INSTANCE_PREFIX), id);
        }
        assert!(pack_id(a, INSTANCE_PREFIX) < pack_id(b, INSTANCE_PREFIX));
        assert!(pack_id(b, INSTANCE_PREFIX) < pack_id(z, INSTANCE_PREFIX));
        assert_eq!(
            unpack_id(pack_id("skey-1a2b3c4d", KEY_PREFIX), KEY_PREFIX),
            "skey-1a2b3c4d"
        );
    }

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:08}")).collect()
    }

    /// A large plan keeps the item indexes as it goes only when its items come in
    /// their order (`store::plan`'s `items_in_index_order`).
    #[test]
    fn sorted_inputs_are_in_index_order_and_interleaved_or_rejected_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let built = |name: &str, rows: &mut dyn Iterator<Item = String>| {
            let path = dir.path().join(name);
            let mut csv = String::from("instance_id,key_id,region\n");
            for row in rows {
                csv.push_str(&row);
                csv.push('\n');
            }
            std::fs::write(&path, csv).unwrap();
            build(&path, &PlanOptions::default()).unwrap()
        };
        let row = |i: u32, k: u32| format!("ins-{i:08x},skey-{k:08x},ap-guangzhou");
        // One key each, sorted by instance (the benchmark's wide shape).
        let wide = built("wide.csv", &mut (0..1000).map(|i| row(i, 1)));
        assert!(items_in_index_order(&wide));
        // 100 keys each, instance by instance (square): a job's pairs are consecutive.
        let square = built(
            "square.csv",
            &mut (0..300)
                .flat_map(|i| (0..100).map(move |k| (i, k)))
                .map(|(i, k)| row(i, k)),
        );
        assert!(square.jobs.len() > 1);
        assert!(items_in_index_order(&square));
        // Three key sets in turn: each row's job is another group's.
        let interleaved = built("interleaved.csv", &mut (0..1000).map(|i| row(i, i % 3)));
        assert!(!items_in_index_order(&interleaved));
        // A quarter of the rows rejected.
        let rejected = built(
            "rejected.csv",
            &mut (0..1000).map(|i| {
                if i % 4 == 0 {
                    format!("not-an-instance-{i},skey-00000001,ap-guangzhou")
                } else {
                    row(i, 1)
                }
            }),
        );
        assert!(!items_in_index_order(&rejected));
    }

    /// Rows carrying an account (issue 23): a job never mixes two accounts, even for
    /// the same region and key; rows without one are the run's own account; a name
    /// that is not an account name is a rejected row naming it.
    #[test]
    fn accounts_split_jobs_and_bad_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.csv");
        std::fs::write(
            &path,
            "instance_id,key_id,region,account\n\
             ins-00000001,skey-00000001,ap-guangzhou,prod\n\
             ins-00000002,skey-00000001,ap-guangzhou,dev\n\
             ins-00000003,skey-00000001,ap-guangzhou,\n\
             ins-00000004,skey-00000001,ap-guangzhou,prod\n\
             ins-00000005,skey-00000001,ap-guangzhou,no/such\n",
        )
        .unwrap();
        let built = build(&path, &PlanOptions::default()).unwrap();
        let routes: Vec<(Option<&str>, Vec<String>)> = built
            .jobs
            .iter()
            .map(|job| {
                (
                    built.accounts[job.region as usize].as_deref(),
                    job.instances
                        .iter()
                        .map(|&i| unpack_id(i, INSTANCE_PREFIX))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            routes,
            vec![
                (None, vec!["ins-00000003".to_string()]),
                (Some("dev"), vec!["ins-00000002".to_string()]),
                (
                    Some("prod"),
                    vec!["ins-00000001".to_string(), "ins-00000004".to_string()]
                ),
            ]
        );
        assert_eq!(built.rejections.len(), 1);
        assert!(
            built.rejections[0]
                .reason
                .contains("\"no/such\" is not an account name"),
            "{}",
            built.rejections[0].reason
        );
        assert_eq!(built.rejections[0].account.as_deref(), Some("no/such"));
    }

    #[test]
    fn counts_follow_the_formula() {
        assert_eq!(lower_bound(0), 0);
        assert_eq!(lower_bound(1), 1);
        assert_eq!(lower_bound(10_000), 1);
        assert_eq!(lower_bound(10_001), 2);
        assert_eq!(jobs_for_group(250, 101), 6);
        let instances = ids("ins-", 250);
        let keys = ids("skey-", 101);
        let pairs: Vec<PairRef> = instances
            .iter()
            .flat_map(|i| {
                keys.iter().map(move |k| PairRef {
                    region: "ap-guangzhou",
                    instance_id: i,
                    key_id: k,
                })
            })
            .collect();
        let jobs = chunk(pairs, true);
        assert_eq!(jobs.len(), 6);
        assert!(
            jobs.iter()
                .all(|j| j.force_stop && j.region == "ap-guangzhou")
        );
        assert_eq!(jobs[0].instance_ids.len(), 100);
        assert_eq!(jobs[1].key_ids, vec!["skey-00000100".to_string()]);
        assert_eq!(jobs[5].instance_ids.len(), 50);
    }

    #[test]
    fn different_key_sets_and_regions_never_share_a_job() {
        let pairs = [
            ("ap-guangzhou", "ins-00000001", "skey-00000001"),
            ("ap-guangzhou", "ins-00000002", "skey-00000001"),
            ("ap-guangzhou", "ins-00000002", "skey-00000002"),
            ("ap-shanghai", "ins-00000001", "skey-00000001"),
        ];
        let jobs = chunk(
            pairs.iter().map(|&(region, instance_id, key_id)| PairRef {
                region,
                instance_id,
                key_id,
            }),
            false,
        );
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].instance_ids, vec!["ins-00000001"]);
        assert_eq!(jobs[1].key_ids, vec!["skey-00000001", "skey-00000002"]);
        assert_eq!(jobs[2].region, "ap-shanghai");
    }

    /// Random pairs over small id spaces, so duplicates and shared key sets are common;
    /// the wide strategy crosses the 100 boundary.
    fn pair_sets() -> impl Strategy<Value = Vec<(u8, u16, u16)>> {
        prop_oneof![
            prop::collection::vec((0u8..3, 0u16..20, 0u16..6), 0..300),
            prop::collection::vec((0u8..2, 0u16..400, 0u16..3), 0..1500),
            prop::collection::vec((0u8..1, 0u16..3, 0u16..250), 0..1500),
        ]
    }

    fn named(raw: &[(u8, u16, u16)]) -> Vec<(String, String, String)> {
        raw.iter()
            .map(|&(r, i, k)| {
                (
                    format!("ap-region{r}"),
                    format!("ins-{i:08x}"),
                    format!("skey-{k:08x}"),
                )
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, rng_seed: proptest::test_runner::RngSeed::Fixed(4), ..ProptestConfig::default() })]

        #[test]
        fn jobs_cover_exactly_the_pairs(raw in pair_sets(), force_stop in any::<bool>()) {
            let pairs = named(&raw);
            let asked: HashSet<(String, String, String)> = pairs.iter().cloned().collect();
            let jobs = chunk(pairs.iter().map(|(r, i, k)| PairRef { region: r, instance_id: i, key_id: k }), force_stop);
            let mut covered = HashSet::new();
            for job in &jobs {
                prop_assert!(!job.instance_ids.is_empty() && job.instance_ids.len() <= 100);
                prop_assert!(!job.key_ids.is_empty() && job.key_ids.len() <= 100);
                prop_assert!(job.instance_ids.windows(2).all(|w| w[0] < w[1]), "instances sorted, distinct");
                prop_assert!(job.key_ids.windows(2).all(|w| w[0] < w[1]), "keys sorted, distinct");
                prop_assert_eq!(job.force_stop, force_stop);
                for i in &job.instance_ids {
                    for k in &job.key_ids {
                        let pair = (job.region.clone(), i.clone(), k.clone());
                        prop_assert!(asked.contains(&pair), "job covers a pair nobody asked for: {:?}", pair);
                        prop_assert!(covered.insert(pair), "pair covered twice");
                    }
                }
            }
            prop_assert_eq!(covered.len(), asked.len());

            // The count: one group per (region, identical key set), ceil x ceil jobs each.
            let mut key_sets: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
            for (r, i, k) in &asked {
                key_sets.entry((r.clone(), i.clone())).or_default().insert(k.clone());
            }
            let mut groups: HashMap<(String, Vec<String>), u64> = HashMap::new();
            for ((r, _), keys) in key_sets {
                *groups.entry((r, keys.into_iter().collect())).or_default() += 1;
            }
            let expected: u64 = groups.iter().map(|((_, keys), n)| jobs_for_group(*n, keys.len() as u64)).sum();
            prop_assert_eq!(jobs.len() as u64, expected);
            prop_assert!(jobs.len() as u64 >= lower_bound(asked.len() as u64));

            // Deterministic whatever the order of the input.
            let mut reversed = pairs.clone();
            reversed.reverse();
            let again = chunk(reversed.iter().map(|(r, i, k)| PairRef { region: r, instance_id: i, key_id: k }), force_stop);
            prop_assert_eq!(again, jobs);
        }

        #[test]
        fn packed_chunking_matches_string_chunking(raw in pair_sets()) {
            // The planner's packed path and the public string path agree job for job.
            let pairs = named(&raw);
            let mut ranked: Vec<(u32, u64, u64)> = pairs.iter().map(|(r, i, k)| {
                (r[9..].parse::<u32>().unwrap_or(0), pack_id(i, INSTANCE_PREFIX), pack_id(k, KEY_PREFIX))
            }).collect();
            ranked.sort_unstable();
            ranked.dedup();
            let (packed, job_of_pair) = chunk_sorted(&ranked);
            for (pair, &job) in ranked.iter().zip(&job_of_pair) {
                let job = &packed[job as usize];
                prop_assert_eq!(job.region, pair.0);
                prop_assert!(job.instances.contains(&pair.1) && job.keys.contains(&pair.2));
            }
            let strings = chunk(pairs.iter().map(|(r, i, k)| PairRef { region: r, instance_id: i, key_id: k }), false);
            prop_assert_eq!(packed.len(), strings.len());
            for (p, s) in packed.iter().zip(&strings) {
                let ins: Vec<String> = p.instances.iter().map(|&i| unpack_id(i, INSTANCE_PREFIX)).collect();
                let keys: Vec<String> = p.keys.iter().map(|&k| unpack_id(k, KEY_PREFIX)).collect();
                prop_assert_eq!(&ins, &s.instance_ids);
                prop_assert_eq!(&keys, &s.key_ids);
            }
        }
    }
}
