//! The figures of each scenario: printed, and appended as a row to a Markdown report
//! (`target/chaos-report.md`, or the file named by `SHOP_CHAOS_REPORT`).

use std::{io::Write as _, path::PathBuf};

use crate::harness::Outcome;

/// Where rows are appended.
pub fn path() -> PathBuf {
    match std::env::var_os("SHOP_CHAOS_REPORT") {
        Some(p) => PathBuf::from(p),
        // CARGO_TARGET_TMPDIR is <target>/tmp.
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("target"))
            .join("chaos-report.md"),
    }
}

fn refused(o: &Outcome) -> String {
    if o.refused.is_empty() {
        return "0".into();
    }
    let total: u64 = o.refused.values().sum();
    let detail: Vec<String> = o.refused.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    format!("{total} ({})", detail.join(" "))
}

fn settle(o: &Outcome) -> String {
    o.settle
        .map(|d| format!("{:.1}", d.as_secs_f64()))
        .unwrap_or_else(|| "not settled".into())
}

fn outcome(o: &Outcome) -> &'static str {
    if o.passed() { "PASS" } else { "FAIL" }
}

pub fn print(o: &Outcome) {
    println!("=== chaos scenario: {}", o.scenario);
    println!("  fault lasted (s)       {:.1}", o.fault.as_secs_f64());
    println!("  orders accepted        {}", o.accepted);
    println!("  orders refused         {}", refused(o));
    println!("  confirmed              {}", o.confirmed);
    println!("  cancelled              {}", o.cancelled);
    println!("  dead letters           {}", o.dead_letters);
    println!("  duplicates suppressed  {}", o.duplicates);
    println!("  time to settle (s)     {}", settle(o));
    println!("  violations             {}", o.violations.len());
    for v in &o.violations {
        println!("    - {v}");
    }
    for n in &o.notes {
        println!("  note: {n}");
    }
    println!("  outcome                {}", outcome(o));
}

/// Appends the scenario's row (and the header, to a new file).
pub fn append(o: &Outcome) {
    let path = path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let new = !path.exists();
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    else {
        eprintln!("cannot write the chaos report {}", path.display());
        return;
    };
    if new {
        let _ = writeln!(
            f,
            "# Shop fault-injection report\n\n\
             Each row is one scenario on private RabbitMQ, Redis and PostgreSQL servers with every \
             program as its own process. *Accepted*: orders answered 202 by the gateway; *refused*: \
             other answers while the fault lasted; *confirmed* / *cancelled*: every order in the \
             database at the end; *duplicates*: redeliveries suppressed by the inboxes \
             (`shop_messages_duplicate_total`, all programs); *settle*: seconds from the heal until \
             the audit is clean (the trickle keeps ordering for a few seconds after the heal); \
             *notes*: the scenario's own figures (phases, detection times...).\n\n\
             | when (UTC) | scenario | outcome | fault (s) | accepted | refused | confirmed | cancelled | violations | dead letters | duplicates | settle (s) | notes |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
    }
    let _ = writeln!(
        f,
        "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
        o.scenario,
        outcome(o),
        o.fault.as_secs_f64(),
        o.accepted,
        refused(o),
        o.confirmed,
        o.cancelled,
        if o.violations.is_empty() {
            "0".to_string()
        } else {
            format!(
                "{}: {}",
                o.violations.len(),
                o.violations.join("; ").replace('|', "/")
            )
        },
        o.dead_letters,
        o.duplicates,
        settle(o),
        o.notes.join("; ").replace('|', "/"),
    );
}
