//! Writing a built plan: the run, its jobs and items through the store's plan writer,
//! in one transaction (each page once when the plan has the database to itself).

use super::*;

pub(super) fn position_of(built: &Built, item: &Item) -> Position {
    Position {
        kind: built.position_kind,
        row: item.row,
        pair: item.pair,
    }
}

/// Writes the plan through `writer` and commits. Blocking: runs in `spawn_blocking`.
///
/// One reused buffer per text column: the million items of a large plan are
/// written without allocating. `owned`, the plan in memory, is freed before the
/// commit, which may sort the item indexes in memory (`store::plan`): the two never
/// add up in the peak RSS.
pub(super) fn write(
    mut writer: crate::store::plan::PlanWriter,
    owned: Built,
    force_stop: bool,
) -> Result<i64, PlanError> {
    let built = &owned;
    let mut instance_ids = Vec::with_capacity(MAX_IDS_PER_REQUEST);
    let mut key_ids = Vec::with_capacity(MAX_IDS_PER_REQUEST);
    let mut add_jobs = |writer: &mut crate::store::plan::PlanWriter,
                        jobs: &[RankedJob],
                        kind: JobKind,
                        payload: Option<&str>|
     -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::with_capacity(jobs.len());
        for job in jobs {
            unpack_ids(&job.instances, INSTANCE_PREFIX, &mut instance_ids);
            unpack_ids(&job.keys, KEY_PREFIX, &mut key_ids);
            ids.push(writer.add_job(NewJob {
                kind,
                region: &built.regions[job.region as usize],
                account: built.accounts[job.region as usize].as_deref(),
                force_stop,
                instance_ids: &instance_ids,
                key_ids: &key_ids,
                payload,
            })?);
        }
        Ok(ids)
    };
    let job_ids = add_jobs(&mut writer, &built.jobs, JobKind::Unbind, None)?;
    let bind_job_ids = add_jobs(&mut writer, &built.bind_jobs, JobKind::Bind, None)?;
    let prechecks: Vec<RankedJob> = built
        .prechecks
        .iter()
        .map(|(region, instances)| RankedJob {
            region: *region,
            instances: instances.clone(),
            keys: Vec::new(),
        })
        .collect();
    let look = crate::rules::ReadPayload::default().encode();
    add_jobs(&mut writer, &prechecks, JobKind::Look, Some(&look))?;
    if items_in_index_order(built) {
        writer.items_in_index_order();
    }
    let mut new_keys = String::new();
    let mut first_item_id = None;
    let (mut position, mut instance_id, mut key_id) = (String::new(), String::new(), String::new());
    writer.add_items(|sink| -> Result<(), PlanError> {
        for item in &built.items {
            position_text(position_of(built, item), &mut position);
            let new = match item.kind {
                Kind::Valid | Kind::Duplicate => {
                    unpack_id_into(item.instance, INSTANCE_PREFIX, &mut instance_id);
                    unpack_id_into(item.key, KEY_PREFIX, &mut key_id);
                    new_keys.clear();
                    for (n, &key) in built.new_key_sets[item.new_keys as usize]
                        .iter()
                        .enumerate()
                    {
                        if n > 0 {
                            new_keys.push(' ');
                        }
                        new_keys.push_str(&unpack_id(key, KEY_PREFIX));
                    }
                    let held = item.kind == Kind::Valid && item.link == HELD;
                    NewItem {
                        position: &position,
                        action: Action::DisassociateInstancesKeyPairs,
                        region: Some(&built.regions[item.region as usize]),
                        account: built.accounts[item.region as usize].as_deref(),
                        instance_id: Some(&instance_id),
                        key_id: Some(&key_id),
                        status: if item.kind == Kind::Valid {
                            ItemStatus::Pending
                        } else {
                            ItemStatus::Duplicate
                        },
                        duplicate_of: (item.kind == Kind::Duplicate)
                            .then(|| first_item_id.map(|first: i64| first + i64::from(item.link)))
                            .flatten(),
                        reason: None,
                        job_id: (item.kind == Kind::Valid && !held)
                            .then(|| job_ids[item.link as usize]),
                        new_key_id: (item.new_keys != 0).then_some(new_keys.as_str()),
                        held,
                    }
                }
                Kind::Rejected => {
                    let rejected = &built.rejections[item.link as usize];
                    NewItem {
                        position: &position,
                        action: Action::DisassociateInstancesKeyPairs,
                        region: rejected.region.as_deref(),
                        account: rejected.account.as_deref(),
                        instance_id: rejected.instance_id.as_deref(),
                        key_id: rejected.key_id.as_deref(),
                        status: ItemStatus::Rejected,
                        duplicate_of: None,
                        reason: Some(&rejected.reason),
                        job_id: None,
                        new_key_id: None,
                        held: false,
                    }
                }
            };
            let id = sink.add(new)?;
            first_item_id.get_or_insert(id);
        }
        // A rotation's bind items, after the input's: one per instance and new key.
        for bind in &built.bind_items {
            let origin = Position {
                kind: built.position_kind,
                row: bind.row,
                pair: bind.pair,
            };
            position_text(origin, &mut position);
            unpack_id_into(bind.instance, INSTANCE_PREFIX, &mut instance_id);
            unpack_id_into(bind.key, KEY_PREFIX, &mut key_id);
            sink.add(NewItem {
                position: &position,
                action: Action::AssociateInstancesKeyPairs,
                region: Some(&built.regions[bind.region as usize]),
                account: built.accounts[bind.region as usize].as_deref(),
                instance_id: Some(&instance_id),
                key_id: Some(&key_id),
                status: ItemStatus::Pending,
                duplicate_of: None,
                reason: None,
                job_id: Some(bind_job_ids[bind.job as usize]),
                new_key_id: None,
                held: false,
            })?;
        }
        Ok(())
    })?;
    drop(owned);
    Ok(writer.commit()?)
}

/// `packed` ids unpacked into `ids`, reusing its strings: a million ids without a
/// million allocations.
fn unpack_ids(packed: &[u64], prefix: &str, ids: &mut Vec<String>) {
    ids.truncate(packed.len());
    for (n, &id) in packed.iter().enumerate() {
        match ids.get_mut(n) {
            Some(text) => unpack_id_into(id, prefix, text),
            None => ids.push(unpack_id(id, prefix)),
        }
    }
}

/// `position` as its `Display` writes it (`line 12`, `index 3, pair 2`), into a
/// reused buffer: without the formatting machinery, which cost a million items about
/// 4% of a plan's instructions (docs/BENCHMARKS.md). The test below holds the two alike.
pub(super) fn position_text(position: Position, out: &mut String) {
    out.clear();
    out.push_str(match position.kind {
        PositionKind::Line => "line ",
        PositionKind::Index => "index ",
    });
    push_decimal(out, position.row);
    if position.pair > 0 {
        out.push_str(", pair ");
        push_decimal(out, u64::from(position.pair));
    }
}

fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// Whether the items' index entries arrive in index order (see
/// `PlanWriter::items_in_index_order`) but for at most one item in eight: pending
/// items whose jobs never fall back in input order (as when the input is sorted by
/// instance, or each job's pairs are consecutive). A rejected, duplicate or held item
/// counts against, its entries landing before the pending ones.
pub(super) fn items_in_index_order(built: &Built) -> bool {
    let mut last_job = 0;
    let mut out_of_order = 0;
    for item in &built.items {
        if item.kind == Kind::Valid && item.link != HELD && item.link >= last_job {
            last_job = item.link;
        } else {
            out_of_order += 1;
        }
    }
    out_of_order <= built.items.len() / 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_text_is_what_position_displays() {
        let mut text = String::from("left over");
        for kind in [PositionKind::Line, PositionKind::Index] {
            for row in [0, 1, 9, 10, 99, 1_000_001, u64::MAX] {
                for pair in [0, 1, 10, 4_294_967_295] {
                    let position = Position { kind, row, pair };
                    position_text(position, &mut text);
                    assert_eq!(text, position.to_string());
                }
            }
        }
    }
}
