//! `kcl-bench simulate`: many seeds of the deterministic fleet simulator
//! ([`kcl_lease::sim`]), spread over the machine's cores, with every fault class; prints what
//! was run, how fast, the faults injected per class, and every violation with its seed.
//!
//! A seed replays one run exactly: `kcl-bench simulate --sim-seed S` prints that run's lease
//! events (and the violation, if any).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kcl_lease::sim::{run_seed, run_seed_logged, FaultClass, SimConfig, Violation};
use kcl_lease::LeaseRenewal;
use serde_json::json;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulateSettings {
    /// Seeds per renewal mode (`0..seeds`, offset by `first_seed`).
    pub seeds: u64,
    /// The first seed.
    pub first_seed: u64,
    /// Processes started at the beginning of each run.
    pub workers: usize,
    /// Leases in the table.
    pub shards: usize,
    /// The renewal modes (both by default).
    pub modes: Vec<LeaseRenewal>,
    /// Threads running seeds (default: the available cores).
    pub threads: usize,
    /// Stop at the first violation (default: run every seed).
    pub stop_at_first: bool,
}

/// Runs every seed of every mode; one JSON line per mode. Violations are printed on stderr
/// (seed, invariant, the events that led to it), and make the result an error.
pub fn run(settings: &SimulateSettings) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut violated = 0;
    for &mode in &settings.modes {
        let config = SimConfig::new(mode).with_fleet(settings.workers, settings.shards);
        config.validate().map_err(anyhow::Error::msg)?;
        let (line, violations) = run_mode(settings, &config);
        for v in &violations {
            eprintln!("{}", describe(v));
        }
        violated += violations.len();
        lines.push(line);
    }
    for line in &lines {
        println!("{line}");
    }
    if violated > 0 {
        bail!("{violated} simulated run(s) violated an invariant (seeds above)");
    }
    Ok(Vec::new())
}

/// Replays one seed and prints its whole event log.
pub fn replay(seed: u64, settings: &SimulateSettings) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut failed = false;
    for &mode in &settings.modes {
        let config = SimConfig::new(mode).with_fleet(settings.workers, settings.shards);
        let (result, events) = run_seed_logged(seed, &config);
        println!("# seed {seed}, {}", config.describe());
        for event in &events {
            println!("{event}");
        }
        match result {
            Ok(summary) => lines.push(
                json!({
                    "scenario": "simulate-replay",
                    "seed": seed,
                    "config": config.describe(),
                    "violation": null,
                    "batches": summary.batches,
                    "takes": summary.takes,
                    "digest": format!("{:016x}", summary.digest),
                })
                .to_string(),
            ),
            Err(v) => {
                failed = true;
                eprintln!("{}", describe(&v));
            }
        }
    }
    if failed {
        bail!("seed {seed} violates an invariant (above)");
    }
    Ok(lines)
}

fn describe(v: &Violation) -> String {
    let mut out = format!(
        "VIOLATION seed {} ({}): {:?} at {:.3}s: {}\n",
        v.seed,
        v.config,
        v.invariant,
        v.at.as_secs_f64(),
        v.message
    );
    for line in &v.events {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn run_mode(settings: &SimulateSettings, config: &SimConfig) -> (String, Vec<Violation>) {
    let next = Arc::new(AtomicU64::new(settings.first_seed));
    let end = settings.first_seed.saturating_add(settings.seeds);
    let violations = Arc::new(Mutex::new(Vec::new()));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..settings.threads.max(1) {
            let (next, violations, totals) = (next.clone(), violations.clone(), totals.clone());
            scope.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    break;
                }
                match run_seed(seed, config) {
                    Ok(summary) => {
                        let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                        t.runs += 1;
                        t.batches += summary.batches;
                        t.takes += summary.takes;
                        t.steals += summary.steals;
                        t.stale_reads += summary.stale_reads;
                        t.simulated += summary.simulated;
                        for (class, n) in summary.faults {
                            *t.faults.entry(class).or_default() += n;
                        }
                    }
                    Err(v) => {
                        let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                        t.runs += 1;
                        violations.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                        if settings.stop_at_first {
                            next.store(end, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    let wall = started.elapsed();
    let t = totals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut violations = std::mem::take(&mut *violations.lock().unwrap_or_else(|p| p.into_inner()));
    violations.sort_by_key(|v| v.seed);
    let faults: BTreeMap<String, u64> = FaultClass::ALL
        .iter()
        .map(|c| (c.name().to_owned(), t.faults.get(c).copied().unwrap_or(0)))
        .collect();
    let line = json!({
        "scenario": "simulate",
        "config": config.describe(),
        "seeds": t.runs,
        "first_seed": settings.first_seed,
        "violations": violations.len(),
        "violating_seeds": violations.iter().map(|v| v.seed).collect::<Vec<_>>(),
        "threads": settings.threads,
        "wall_s": round(wall.as_secs_f64()),
        "runs_per_second": round(t.runs as f64 / wall.as_secs_f64().max(1e-9)),
        "simulated_s_per_run": round(t.simulated.as_secs_f64() / (t.runs.max(1) as f64)),
        "batches": t.batches,
        "takes": t.takes,
        "steals": t.steals,
        "stale_reads": t.stale_reads,
        "faults_injected": faults,
    })
    .to_string();
    (line, violations)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[derive(Clone, Default)]
struct Totals {
    runs: u64,
    batches: u64,
    takes: u64,
    steals: u64,
    stale_reads: u64,
    simulated: Duration,
    faults: BTreeMap<FaultClass, u64>,
}
