//! What a JSON document costs as a tree of `serde_json::Value`, estimated
//! from its text in one pass that allocates nothing. A tree costs far more
//! than its text where values are small: a one-member object takes a
//! B-tree node of about 600 bytes for 8 bytes of text, so a body under the
//! size cap can still take gigabytes as a tree. Callers refuse a document
//! whose estimate is over their budget before building it.

/// Bytes a tree is estimated to take per object (its map node), per array,
/// per slot of an object or array (a `Value` and its key), and per string
/// beyond its text (its allocation).
const OBJECT: u64 = 640;
const ARRAY: u64 = 32;
const SLOT: u64 = 64;
const STRING: u64 = 32;

/// The estimated size of `text` as a tree, in bytes. The text need not be
/// valid JSON: the estimate only has to bound what parsing it could build.
pub fn tree_cost(text: &[u8]) -> u64 {
    let mut cost: u64 = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        cost += match byte {
            b'"' => {
                in_string = true;
                STRING
            }
            b'{' => OBJECT + SLOT,
            b'[' => ARRAY + SLOT,
            b',' => SLOT,
            _ => 0,
        };
    }
    // String contents: at most the text itself.
    cost + text.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_cost_more_than_their_text() {
        let tiny = format!("[{}]", vec![r#"{"a":1}"#; 1000].join(","));
        assert!(tree_cost(tiny.as_bytes()) > 700 * 1000);
        let numbers = format!("[{}]", vec!["1"; 1000].join(","));
        assert!(tree_cost(numbers.as_bytes()) >= 64 * 1000);
    }

    #[test]
    fn brackets_and_commas_inside_strings_cost_nothing_more() {
        let text = r#"{"message":"[{,},{,}] \" [[[ {{{ ,,,"}"#;
        assert_eq!(tree_cost(text.as_bytes()), OBJECT + SLOT + 2 * STRING + text.len() as u64);
    }

    #[test]
    fn a_realistic_page_is_far_under_a_budget() {
        let item = r#"{"id":123456,"status":"sent","severity":"high","subject":"HIGH - Incident on WS-12 (Acme)","indicator_types":["footholds","process_detections"],"organization_id":101,"agent_id":7,"updated_at":"2026-05-27T14:00:00Z","sent_at":"2026-05-27T13:00:00Z","body":"<p>words</p>"}"#;
        let page = format!(r#"{{"incident_reports":[{}],"pagination":{{}}}}"#, vec![item; 500].join(","));
        assert!(tree_cost(page.as_bytes()) < 4 << 20, "{}", tree_cost(page.as_bytes()));
    }
}
