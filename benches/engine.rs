//! The engine's own cost, without Python: `cargo bench --bench engine`.
//! Prints ns/op (median of rounds) and writes `benches/results/engine.json`, which the
//! Python harness shows beside the Python-visible cost of the same operations.

use std::time::Instant;

use consensus_db::{Behavior, Database, NewArtifact, Options};

const ROUNDS: usize = 5;

fn median_ns(iters: u64, mut f: impl FnMut(u64)) -> f64 {
    let mut samples: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let start = Instant::now();
            for i in 0..iters {
                f(round as u64 * iters + i);
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[ROUNDS / 2]
}

fn artifact(i: u64) -> NewArtifact {
    NewArtifact {
        spec_id: format!("SPEC-{}", i % 50),
        stage: "plan".into(),
        agent_name: ["gemini", "claude", "code", "gpt_pro"][i as usize % 4].into(),
        content_json: format!(r#"{{"verdict": "approve", "n": {i}, "notes": ["a", "b"]}}"#),
        run_id: Some(format!("run-{}", i % 50)),
        ..Default::default()
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("consensus-db-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = Database::open(dir.join("bench.db"), Options::default()).expect("open");
    let n_agents = 10_000u64;
    db.write(|tx| {
        for i in 0..n_agents {
            tx.execute(
                "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)
                 VALUES (?1, 'SPEC', 'plan', 'quality_gate', 'gemini', '2025-01-01 00:00:00')",
                &[format!("agent-{i}").into()],
            )?;
        }
        Ok(())
    })
    .expect("seed");
    for i in 0..5 {
        db.store_artifact(&NewArtifact { spec_id: "Q".into(), stage: "plan".into(), ..artifact(i) }).expect("seed");
    }
    let ids: Vec<String> = (0..n_agents).map(|i| format!("agent-{}", (i * 7919) % n_agents)).collect();
    let pick = |i: u64| ids[(i % n_agents) as usize].as_str();

    let mut results: Vec<(&str, f64)> = Vec::new();
    results.push(("pool_checkout", median_ns(200_000, |_| drop(db.conn().expect("checkout")))));
    results.push((
        "get_agent_spawn_info",
        median_ns(100_000, |i| {
            db.get_agent_spawn_info(pick(i)).expect("read");
        }),
    ));
    // Two threads, no GIL: how the engine itself scales (ns per read, both threads together).
    let per_thread = 100_000u64;
    results.push((
        "get_agent_spawn_info_2_threads",
        median_ns(1, |_| {
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let pick = &pick;
                    let db = &db;
                    s.spawn(move || {
                        for i in 0..per_thread {
                            db.get_agent_spawn_info(pick(t * per_thread + i)).expect("read");
                        }
                    });
                }
            });
        }) / (2 * per_thread) as f64,
    ));
    {
        let tx = db.begin(Behavior::Deferred).expect("begin");
        results.push((
            "point_select_in_read_tx",
            median_ns(100_000, |i| {
                let mut s = tx
                    .prepare_cached("SELECT phase_type, stage FROM agent_executions WHERE agent_id = ?1")
                    .expect("prepare");
                let _: (String, String) = s.query_row([pick(i)], |r| Ok((r.get(0)?, r.get(1)?))).expect("row");
            }),
        ));
    }
    results.push((
        "record_agent_spawn",
        median_ns(2_000, |i| {
            db.record_agent_spawn(&format!("new-{i}"), "SPEC", "plan", "quality_gate", "claude", None).expect("spawn");
        }),
    ));
    results.push((
        "record_agent_completion",
        median_ns(2_000, |i| {
            db.record_agent_completion(pick(i), "done").expect("complete");
        }),
    ));
    results.push((
        "store_artifact",
        median_ns(2_000, |i| {
            db.store_artifact(&artifact(i)).expect("store");
        }),
    ));
    // Eight writer threads, no GIL: the write lane's own ceiling on this machine (ns per
    // write, all threads together), and how many commits carried them.
    for (name, threads) in [("store_artifact_8_threads", 8u64), ("store_artifact_1_thread_same_loop", 1)] {
        let per_thread = 4_000 / threads;
        let before = db.lane_stats();
        let ns = median_ns(1, |round| {
            std::thread::scope(|s| {
                for t in 0..threads {
                    let db = &db;
                    s.spawn(move || {
                        for i in 0..per_thread {
                            db.store_artifact(&artifact(round * 1_000_000 + t * per_thread + i)).expect("store");
                        }
                    });
                }
            });
        }) / (threads * per_thread) as f64;
        let after = db.lane_stats();
        let writes = (after.members - before.members) as f64;
        println!("{name}: {:.1} writes per commit", writes / (after.groups - before.groups) as f64);
        results.push((name, ns));
    }
    results.push((
        "query_artifacts_5",
        median_ns(20_000, |_| {
            assert_eq!(db.query_artifacts("Q", "plan").expect("query").len(), 5);
        }),
    ));
    let batch: Vec<NewArtifact> = (0..500).map(artifact).collect();
    results.push((
        "store_artifacts_500_per_row",
        median_ns(10, |_| {
            db.store_artifacts(&batch).expect("batch");
        }) / 500.0,
    ));

    println!("{:<32} {:>12} {:>14}", "operation", "ns/op", "ops/s");
    for (name, ns) in &results {
        println!("{name:<32} {ns:>12.0} {:>14.0}", 1e9 / ns);
    }
    let json = results
        .iter()
        .map(|(name, ns)| format!("  \"{name}\": {{\"ns_per_op\": {ns:.1}, \"ops_per_s\": {:.1}}}", 1e9 / ns))
        .collect::<Vec<_>>()
        .join(",\n");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/engine.json");
    if let Some(parent) = out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&out, format!("{{\n{json}\n}}\n")).expect("write results");
    println!("wrote {}", out.display());
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
