//! CPU cost of the per-row pipeline (parse, transform, gzip) on a saved SIEM page,
//! without any network: `cargo run --release --no-default-features --example
//! pipeline_cost -- page.json`.
use std::time::Instant;

use _core::{event_id, log_of_row, now_ms, parse_page, Enrichment, Encoding, LogTemplate, Prepared, StalePolicy, FALLBACK_GZIP_LEVEL};

fn main() {
    let path = std::env::args().nth(1).expect("usage: pipeline_cost PAGE.json");
    let page = std::fs::read(path).expect("readable page");
    let template = LogTemplate { service: "huntress-siem".into(), ddtags: "team:secops,query_name:all".into(), stale_policy: StalePolicy::RewriteDate };
    let rounds = 100;
    let (mut parse, mut build, mut compress, mut rows, mut bytes) = (0.0, 0.0, 0.0, 0usize, 0usize);
    for _ in 0..rounds {
        let started = Instant::now();
        let parsed = parse_page(&page).expect("a valid page");
        parse += started.elapsed().as_secs_f64();
        let started = Instant::now();
        rows += parsed.rows.len();
        let mut batch = Vec::new();
        for row in &parsed.rows {
            if let Prepared::Log(log) = log_of_row(row, event_id(row), &template, &Enrichment::default(), now_ms()) {
                bytes += log.json.len();
                batch.extend_from_slice(&log.json);
            }
        }
        build += started.elapsed().as_secs_f64();
        let started = Instant::now();
        std::hint::black_box(Encoding::Gzip(FALLBACK_GZIP_LEVEL).encode_json_array(&batch).unwrap());
        compress += started.elapsed().as_secs_f64();
    }
    println!(
        "rows {rows}: parse {:.2} us/row, transform+serialize {:.2} us/row, gzip {:.2} us/row, {} bytes/log",
        parse * 1e6 / rows as f64,
        build * 1e6 / rows as f64,
        compress * 1e6 / rows as f64,
        bytes / rows
    );
}
