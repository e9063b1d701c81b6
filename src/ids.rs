//! Identifier formats shared by every layer: `ins-` and `skey-` followed by
//! eight characters of `[0-9a-z]`, exactly as the CVM API accepts them.

/// Most ids of one kind the API takes in one request (`InstanceIds`, `KeyIds`).
pub const MAX_IDS_PER_REQUEST: usize = 100;

const INSTANCE_PREFIX: &str = "ins-";
const KEY_PREFIX: &str = "skey-";
const ID_SUFFIX_LEN: usize = 8;

fn has_id_shape(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == ID_SUFFIX_LEN
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// True when `id` is a well-formed instance id such as `ins-1a2b3c4d`.
pub fn is_instance_id(id: &str) -> bool {
    has_id_shape(id, INSTANCE_PREFIX)
}

/// True when `id` is a well-formed key pair id such as `skey-1a2b3c4d`.
pub fn is_key_id(id: &str) -> bool {
    has_id_shape(id, KEY_PREFIX)
}

/// Explains why `id` is not a valid instance id, in words for a person.
pub fn instance_id_problem(id: &str) -> Option<String> {
    id_problem(id, INSTANCE_PREFIX, "instance id")
}

/// Explains why `id` is not a valid key pair id, in words for a person.
pub fn key_id_problem(id: &str) -> Option<String> {
    id_problem(id, KEY_PREFIX, "key id")
}

fn id_problem(id: &str, prefix: &str, what: &str) -> Option<String> {
    if has_id_shape(id, prefix) {
        return None;
    }
    let shown = shorten(id);
    Some(if id.is_empty() {
        format!("{what} is empty")
    } else if id.trim() != id {
        format!("{what} {shown:?} has leading or trailing spaces")
    } else if id != id.to_ascii_lowercase() && has_id_shape(&id.to_ascii_lowercase(), prefix) {
        // Never lowercased silently: the row is rejected, and the message says how to fix it.
        format!(
            "{what} {shown:?} does not start with {prefix:?}: ids are lowercase, like {:?}",
            id.to_ascii_lowercase()
        )
    } else if !id.starts_with(prefix) {
        format!("{what} {shown:?} does not start with {prefix:?}")
    } else {
        format!(
            "{what} {shown:?} must be {prefix:?} followed by {ID_SUFFIX_LEN} characters of 0-9 or a-z"
        )
    })
}

/// Cuts a value for an error message so a 10 MB cell does not become a 10 MB message.
pub fn shorten(value: &str) -> String {
    const MAX_CHARS: usize = 40;
    if value.chars().count() <= MAX_CHARS {
        value.to_string()
    } else {
        let head: String = value.chars().take(MAX_CHARS).collect();
        format!("{head}...")
    }
}

/// True when `region` looks like a Tencent Cloud region name (`ap-guangzhou`, `na-siliconvalley`).
pub fn is_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 64
        && region.contains('-')
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

/// How an account is named to a person: its name, or for `None` (rows without an
/// account in a run over many accounts) the run's own.
pub fn account_shown(account: Option<&str>) -> &str {
    account.unwrap_or("(the run's own)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_documented_shapes() {
        assert!(is_instance_id("ins-1a2b3c4d"));
        assert!(is_key_id("skey-0000zzzz"));
        for bad in [
            "ins-1122",
            "ins-1A2B3C4D",
            "ins-1a2b3c4d5",
            " ins-1a2b3c4d",
            "skey-1a2b3c4d",
            "ins_1a2b3c4d",
            "",
        ] {
            assert!(!is_instance_id(bad), "{bad:?} accepted");
        }
        for bad in [
            "skey-1122",
            "ins-1a2b3c4d",
            "skey-1a2b3c4-",
            "SKEY-1a2b3c4d",
        ] {
            assert!(!is_key_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn problems_are_explained() {
        assert_eq!(instance_id_problem("ins-1a2b3c4d"), None);
        assert!(instance_id_problem("").unwrap().contains("empty"));
        assert!(
            instance_id_problem(" ins-1a2b3c4d")
                .unwrap()
                .contains("spaces")
        );
        assert!(
            key_id_problem("key-12345678")
                .unwrap()
                .contains("does not start with")
        );
        assert!(key_id_problem("skey-123").unwrap().contains("8 characters"));
        let upper = instance_id_problem("INS-1A2B3C4D").unwrap();
        assert!(
            upper.contains("lowercase") && upper.contains("ins-1a2b3c4d"),
            "{upper}"
        );
        assert!(
            key_id_problem("skey-1A2b3c4d")
                .unwrap()
                .contains("lowercase")
        );
        let long = "x".repeat(10_000);
        assert!(instance_id_problem(&long).unwrap().len() < 200);
    }

    #[test]
    fn regions() {
        assert!(is_region("ap-guangzhou"));
        assert!(is_region("na-siliconvalley"));
        assert!(!is_region("AP-guangzhou"));
        assert!(!is_region("guangzhou"));
        assert!(!is_region(""));
    }
}
