//! CPU cost of the per-row pipeline (parse, transform, batch, gzip) on a saved
//! SIEM page, without any network: `cargo run --release --no-default-features
//! --example pipeline_cost -- page.json`.
use std::time::Instant;

use _core::config::StalePolicy;
use _core::siem::parse_page;
use _core::transform::{now_ms, prepare, Enrichment, LogTemplate, Prepared};

fn main() {
    let path = std::env::args().nth(1).expect("usage: pipeline_cost PAGE.json");
    let page = std::fs::read(path).expect("readable page");
    let template = LogTemplate { service: "huntress-siem".into(), ddtags: "team:secops,query_name:all".into(), stale_policy: StalePolicy::RewriteDate };
    let rounds = 100;
    let (mut parse, mut build, mut rows) = (0.0, 0.0, 0usize);
    let mut sink = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let value: serde_json::Value = serde_json::from_slice(&page).unwrap();
        let parsed = parse_page(value).unwrap();
        parse += started.elapsed().as_secs_f64();
        let started = Instant::now();
        rows += parsed.rows.len();
        let logs: Vec<_> = parsed.rows.into_iter().filter_map(|row| match prepare(row, &template, &Enrichment::default(), now_ms()) {
            Prepared::Log(log) => Some(log),
            _ => None,
        }).collect();
        build += started.elapsed().as_secs_f64();
        sink.push(logs.len());
    }
    println!("rows {rows}: parse {:.2} us/row, transform+serialize {:.2} us/row", parse * 1e6 / rows as f64, build * 1e6 / rows as f64);
}
