//! Datadog tag values: normalisation and bounded cardinality.
//!
//! Values are normalised the way Datadog does it: lowercase; letters, digits and
//! `_ - : . /` kept, anything else becomes `_`; repeated `_` collapse into one;
//! leading and trailing `_` are trimmed; at most 200 characters.

use std::collections::BTreeMap;

pub const MAX_TAG_LENGTH: usize = 200;
/// The most distinct values one tag of an inventory metric takes; the least
/// frequent values beyond it are folded into `other`.
pub const MAX_TAG_VALUES: usize = 100;
pub const OTHER: &str = "other";
/// The value of a tag whose source field is missing or empty.
pub const UNKNOWN: &str = "unknown";
/// The value of an inventory tag whose field the API gave as null or left out.
pub const NONE: &str = "none";
/// Metrics by organization tag at most this many organizations.
pub const MAX_ORGS_TAGGED: usize = 500;

/// The normalised form of a tag value; may be empty (see `tag`).
pub fn normalize(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_TAG_LENGTH));
    for c in value.trim().chars().flat_map(char::to_lowercase) {
        let c = if c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '/') { c } else { '_' };
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
    }
    if out.chars().count() > MAX_TAG_LENGTH {
        out = out.chars().take(MAX_TAG_LENGTH).collect();
    }
    out.trim_end_matches('_').to_string()
}

/// `name:value` with the value normalised; `name:unknown` when nothing is left.
pub fn tag(name: &str, value: &str) -> String {
    let value = normalize(value);
    if value.is_empty() {
        format!("{name}:{UNKNOWN}")
    } else {
        format!("{name}:{value}")
    }
}

/// The normalised value, or `fallback` (`UNKNOWN`, `NONE`) when nothing is left.
pub fn value_or(value: Option<&str>, fallback: &str) -> String {
    let value = normalize(value.unwrap_or_default());
    if value.is_empty() {
        fallback.to_string()
    } else {
        value
    }
}

/// Bounds the number of distinct values: when there are more than `max`, the
/// `max - 1` most frequent (ties broken by value) are kept and the rest are
/// summed into `other`, so at most `max` values remain and the total is unchanged.
pub fn cap_values(counts: BTreeMap<String, u64>, max: usize) -> BTreeMap<String, u64> {
    let max = max.max(1);
    if counts.len() <= max {
        return counts;
    }
    let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut kept = BTreeMap::new();
    let mut other = 0;
    for (value, count) in ranked {
        if value != OTHER && kept.len() < max - 1 {
            kept.insert(value, count);
        } else {
            other += count;
        }
    }
    kept.insert(OTHER.to_string(), other);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_normalised_the_datadog_way() {
        assert_eq!(normalize("Acme Dental"), "acme_dental");
        assert_eq!(normalize("  Blue   Harbor -- Logistics!! "), "blue_harbor_--_logistics");
        assert_eq!(normalize("O'Brien & Sons, LLC"), "o_brien_sons_llc");
        assert_eq!(normalize("__x__"), "x");
        assert_eq!(normalize("path/to:thing.v2"), "path/to:thing.v2");
        assert_eq!(normalize("Zürich Ärzte"), "zürich_ärzte");
        assert_eq!(normalize("???"), "");
        assert_eq!(normalize("Windows 11 Pro"), "windows_11_pro");
    }

    #[test]
    fn values_are_cut_at_200_characters() {
        let long = "a".repeat(250);
        assert_eq!(normalize(&long).len(), MAX_TAG_LENGTH);
        let edge = format!("{} b", "a".repeat(199));
        assert_eq!(normalize(&edge), "a".repeat(199), "a trailing `_` left by the cut is trimmed");
    }

    #[test]
    fn empty_values_become_unknown() {
        assert_eq!(tag("os", ""), "os:unknown");
        assert_eq!(tag("os", "!!"), "os:unknown");
        assert_eq!(tag("platform", "Windows"), "platform:windows");
        assert_eq!(value_or(None, UNKNOWN), "unknown");
        assert_eq!(value_or(Some(" "), NONE), "none");
    }

    #[test]
    fn cardinality_is_capped_and_totals_kept() {
        let counts: BTreeMap<String, u64> = (0..150u64).map(|i| (format!("v{i:03}"), i + 1)).collect();
        let total: u64 = counts.values().sum();
        let capped = cap_values(counts, 100);
        assert_eq!(capped.len(), 100);
        assert_eq!(capped.values().sum::<u64>(), total);
        // The 99 most frequent are kept: v051..v149.
        assert!(capped.contains_key("v149") && capped.contains_key("v051") && !capped.contains_key("v050"));
        assert_eq!(capped[OTHER], (1..=51).sum::<u64>());
    }

    #[test]
    fn an_existing_other_value_is_merged() {
        let counts: BTreeMap<String, u64> = [("a", 5), ("b", 4), ("other", 3), ("c", 1)].iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let capped = cap_values(counts.clone(), 3);
        assert_eq!(capped, [("a", 5), ("b", 4), ("other", 4)].iter().map(|(k, v)| (k.to_string(), *v)).collect());
        assert_eq!(cap_values(counts.clone(), 10), counts);
    }
}
