//! The PostgreSQL wing from Rust, without Python (`cargo test --features postgres --test
//! postgres`), against a real PostgreSQL 15 this test starts itself, as tests/pg_cluster.py
//! does: `initdb` in a temporary directory, `pg_ctl` on a free loopback port, stopped (and
//! the directory removed) when the test process exits. Each test works in a schema of its
//! own (the URL's `search_path`). As root the server runs as the `postgres` user
//! (`runuser`). Without the server binaries the tests say so and pass, except under
//! `CI=true`, where that is a failure (CI installs postgresql-15).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use consensus_db::postgres::{PgDatabase, PgOptions, PG_LAYOUT};
use consensus_db::{Error, NewArtifact, NewSynthesis, Page, Params};
use rusqlite::types::Value;

const SUPERUSER: &str = "cdb";

struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
}

impl Cluster {
    /// The URL of database `postgres`, with `options` (server settings, URL-encoded) if any.
    fn url(&self, options: &str) -> String {
        let base = format!("postgresql://{SUPERUSER}@127.0.0.1:{}/postgres", self.port);
        if options.is_empty() {
            base
        } else {
            format!("{base}?options={options}")
        }
    }

    fn admin(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(""), postgres::NoTls).expect("the test server accepts")
    }

    /// argv run as the server's user (PostgreSQL refuses to run as root).
    fn server_command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn stop(&self) {
        let data = self.root.join("data");
        let _ = self.server_command("pg_ctl").arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The directory of `initdb`/`pg_ctl`, or None when PostgreSQL is not installed.
fn bindir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// Gives `path` to the `postgres` user when running as root.
fn own(path: &Path) -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let user = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam's result is read at once, before any other call that could reuse it.
    let pw = unsafe { libc::getpwnam(user.as_ptr()) };
    if pw.is_null() {
        return Err("running as root and there is no unprivileged 'postgres' user to run the server as".into());
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::chown(c_path.as_ptr(), uid, gid) } != 0 {
        return Err(format!("chown {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

fn start() -> Result<Cluster, String> {
    let bin = bindir().ok_or("PostgreSQL server binaries (initdb, pg_ctl) are not installed")?;
    let root = tempfile::Builder::new().prefix("cdb-pg-rs-").tempdir().map_err(|e| e.to_string())?.keep();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    own(&root)?;
    let cluster = Cluster { bin, root, port: free_port() };
    let data = cluster.root.join("data");
    let mut initdb = cluster.server_command("initdb");
    initdb.arg("-D").arg(&data).args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]);
    run(initdb, "initdb")?;
    let conf = format!(
        "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 100\n\
         fsync = off\nshared_buffers = 32MB\n",
        cluster.port,
        cluster.root.display()
    );
    let auto = data.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto).unwrap_or_default();
    std::fs::write(&auto, existing + &conf).map_err(|e| e.to_string())?;
    let mut pg_ctl = cluster.server_command("pg_ctl");
    pg_ctl.arg("-D").arg(&data).arg("-l").arg(cluster.root.join("server.log")).args(["-w", "-t", "60", "start"]);
    if let Err(e) = run(pg_ctl, "pg_ctl start") {
        cluster.stop();
        return Err(e);
    }
    Ok(cluster)
}

/// A server of one test's own (for settings that are server-wide), stopped when dropped.
struct OwnCluster(Cluster);

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.0.stop();
    }
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

extern "C" fn stop_cluster_at_exit() {
    if let Some(Ok(cluster)) = CLUSTER.get() {
        cluster.stop();
    }
}

/// The session's server (started by the first test that asks), or None where it cannot
/// run here (a failure under CI=true).
fn cluster() -> Option<&'static Cluster> {
    let started = CLUSTER.get_or_init(|| {
        let started = start();
        if started.is_ok() {
            // SAFETY: registers a plain function, run once at process exit.
            unsafe { libc::atexit(stop_cluster_at_exit) };
        }
        started
    });
    match started {
        Ok(c) => Some(c),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL is part of CI and cannot run here: {why}")
        }
        Err(why) => {
            eprintln!("PostgreSQL backend not tested: {why}");
            None
        }
    }
}

static SCHEMAS: AtomicUsize = AtomicUsize::new(0);

/// A URL whose search_path is a new, empty schema; `options` adds server settings
/// (`-c name=value`, spaces as `%20`).
fn fresh_url(cluster: &Cluster, options: &str) -> String {
    let schema = format!("rs{}_{}", SCHEMAS.fetch_add(1, Ordering::Relaxed), std::process::id());
    cluster.admin().batch_execute(&format!("CREATE SCHEMA {schema}")).expect("create schema");
    cluster.url(&format!("-csearch_path%3D{schema}{options}"))
}

fn open(url: &str) -> PgDatabase {
    PgDatabase::open(url, PgOptions::default()).expect("open")
}

fn artifact(spec: &str, stage: &str, agent: &str, json: &str) -> NewArtifact {
    NewArtifact {
        spec_id: spec.into(),
        stage: stage.into(),
        agent_name: agent.into(),
        content_json: json.into(),
        ..Default::default()
    }
}

fn text(v: &Value) -> &str {
    match v {
        Value::Text(s) => s,
        other => panic!("not text: {other:?}"),
    }
}

fn integer(v: &Value) -> i64 {
    match v {
        Value::Integer(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

fn no_params() -> Params {
    Params::Positional(Vec::new())
}

#[test]
fn opening_migrates_once_and_an_unmigrated_database_is_refused_without_migrate() {
    let Some(cluster) = cluster() else { return };
    let url = fresh_url(cluster, "");
    let refused = PgDatabase::open(&url, PgOptions { migrate: false, ..Default::default() });
    assert!(matches!(refused, Err(Error::Migration(ref m)) if m.contains("migrate")), "{:?}", refused.err());
    // Four threads open the empty schema at once: the advisory lock lets one migrate.
    let opened: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn({
                let url = url.clone();
                move || PgDatabase::open(&url, PgOptions::default())
            })
        })
        .collect();
    for db in opened {
        let db = db.join().expect("no panic").expect("open and migrate");
        assert_eq!(db.layout_revision().unwrap(), PG_LAYOUT);
    }
    let db = open(&url);
    assert_eq!(db.migrate().unwrap(), consensus_db::sqlite::migrations::LATEST_VERSION);
    let revisions = db.query("SELECT key, value FROM consensus_db_meta ORDER BY key", &no_params()).unwrap();
    let revisions: Vec<(String, i64)> = revisions.iter().map(|r| (text(&r[0]).to_owned(), integer(&r[1]))).collect();
    assert_eq!(revisions, [("pg_layout".to_owned(), 1), ("pg_revision".to_owned(), PG_LAYOUT)]);
    // Now migrated, opening without migrate is fine.
    let again = PgDatabase::open(&url, PgOptions { migrate: false, ..Default::default() }).unwrap();
    assert_eq!(again.layout_revision().unwrap(), PG_LAYOUT);
    db.close();
    assert!(db.is_closed() && matches!(db.get_agent_name("a"), Err(Error::Closed)));
}

#[test]
fn executions_completions_and_extraction_failures_read_back() {
    let Some(cluster) = cluster() else { return };
    let db = open(&fresh_url(cluster, ""));
    db.record_agent_spawn("a1", "SPEC-1", "plan", "quality_gate", "gemini", Some("run-1")).unwrap();
    db.record_agent_spawn_on_branch("a2", "SPEC-1", "plan", "regular_stage", "claude", None, Some("b-7")).unwrap();
    assert_eq!(db.get_agent_name("a1").unwrap().as_deref(), Some("gemini"));
    assert_eq!(db.get_agent_name("nobody").unwrap(), None);
    assert_eq!(db.get_agent_spawn_info("a1").unwrap(), Some(("quality_gate".into(), "plan".into())));
    let route = db.get_agent_route("a2").unwrap().expect("a route");
    assert_eq!((route.phase_type.as_str(), route.branch_id.as_deref()), ("regular_stage", Some("b-7")));
    assert!(db.record_agent_completion("a1", "the answer").unwrap());
    assert!(!db.record_agent_completion("nobody", "x").unwrap());
    assert!(db.record_extraction_failure("a2", "not json", "no JSON object").unwrap());
    let runs = db.query_agent_executions("SPEC-1", "plan", None, false, None).unwrap();
    assert_eq!(runs.iter().map(|e| e.agent_id.as_str()).collect::<Vec<_>>(), ["a1", "a2"]);
    assert_eq!(runs[0].response_text.as_deref(), Some("the answer"));
    assert!(runs[0].completed_at.is_some() && runs[1].completed_at.is_some());
    assert_eq!(runs[0].spawned_at.len(), "YYYY-MM-DD HH:MM:SS".len());
    let on_branch = db.query_agent_executions("SPEC-1", "plan", Some("b-7"), true, None).unwrap();
    assert_eq!(on_branch.iter().map(|e| e.agent_id.as_str()).collect::<Vec<_>>(), ["a2"]);
    let failures = db.query_extraction_failures("SPEC-1").unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(
        (failures[0].agent_id.as_str(), failures[0].response_text.as_deref(), failures[0].extraction_error.as_str()),
        ("a2", Some("not json"), "no JSON object")
    );
    // Retention deletes by spawned_at (UTC text): only the old execution goes.
    let old = "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) \
               VALUES ('old', 'SPEC-1', 'plan', 'quality_gate', 'g', '2020-01-01 00:00:00')";
    assert_eq!(db.execute(old, &no_params()).unwrap(), 1);
    assert_eq!(db.cleanup_old_executions(1).unwrap(), 1);
    assert_eq!(db.get_agent_name("old").unwrap(), None);
    assert_eq!(db.get_agent_name("a1").unwrap().as_deref(), Some("gemini"));
}

#[test]
fn artifacts_and_syntheses_keep_their_text_byte_for_byte() {
    let Some(cluster) = cluster() else { return };
    let db = open(&fresh_url(cluster, ""));
    // JSONB would reorder and respace this: the store keeps the caller's text.
    let json = r#"{"b": 1,   "a": [2, 1], "é": "\u00e9"}"#;
    let one = db
        .store_artifact(&NewArtifact {
            response_text: Some("raw".into()),
            run_id: Some("run-1".into()),
            model_version: Some("m-2".into()),
            ..artifact("S", "plan", "gemini", json)
        })
        .unwrap();
    let batch = db
        .store_artifacts(
            &(0..3).map(|i| artifact("S", "plan", &format!("agent-{i}"), &format!("[{i}]"))).collect::<Vec<_>>(),
        )
        .unwrap();
    assert_eq!(batch.len(), 3);
    assert!(batch.windows(2).all(|w| w[0] < w[1]) && one < batch[0], "ids increase: {one} {batch:?}");
    let oldest_first = db.query_artifacts("S", "plan").unwrap();
    assert_eq!(oldest_first.iter().map(|a| a.id).collect::<Vec<_>>(), [one, batch[0], batch[1], batch[2]]);
    let first = &oldest_first[0];
    assert_eq!(first.content_json, json);
    assert_eq!(
        (first.response_text.as_deref(), first.run_id.as_deref(), first.model_version.as_deref()),
        (Some("raw"), Some("run-1"), Some("m-2"))
    );
    assert!(first.created_at_ms > 1_700_000_000_000, "{}", first.created_at_ms);
    assert_eq!(db.count_artifacts("S", "plan").unwrap(), 4);
    let page = db
        .query_artifacts_page("S", "plan", &Page { newest_first: true, limit: Some(2), ..Default::default() })
        .unwrap();
    assert_eq!(page.iter().map(|a| a.id).collect::<Vec<_>>(), [batch[2], batch[1]]);
    assert_eq!(db.delete_stage_artifacts("S", "plan").unwrap(), 4);
    assert_eq!(db.count_artifacts("S", "plan").unwrap(), 0);

    let id = db
        .store_synthesis(&NewSynthesis {
            spec_id: "S".into(),
            stage: "plan".into(),
            output_markdown: "# merged\n".into(),
            output_path: Some("/out/S.md".into()),
            status: "degraded".into(),
            artifacts_count: Some(3),
            agreements: Some(r#"["a",  "b"]"#.into()),
            conflicts: Some("[]".into()),
            degraded: true,
            run_id: Some("run-1".into()),
            ..Default::default()
        })
        .unwrap();
    let got = db.query_latest_synthesis("S", "plan").unwrap().expect("a synthesis");
    assert_eq!(got.id, id);
    assert_eq!(
        (got.output_markdown.as_str(), got.output_path.as_deref(), got.status.as_str(), got.artifacts_count),
        ("# merged\n", Some("/out/S.md"), "degraded", Some(3))
    );
    assert_eq!((got.agreements.as_deref(), got.conflicts.as_deref()), (Some(r#"["a",  "b"]"#), Some("[]")));
    assert!(got.degraded && got.run_id.as_deref() == Some("run-1"));
    assert!(db.query_latest_synthesis("S", "other").unwrap().is_none());
}

#[test]
fn transactions_commit_roll_back_and_nest_savepoints() {
    let Some(cluster) = cluster() else { return };
    let db = open(&fresh_url(cluster, ""));
    let insert = "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) \
                  VALUES ($1, 'S', 'plan', 'quality_gate', 'g', '2026-01-01 00:00:00')";
    let id = |s: &str| Params::Positional(vec![Value::Text(s.into())]);
    let mut tx = db.begin().unwrap();
    tx.execute_params(insert, &id("kept")).unwrap();
    let savepoint = tx.savepoint().unwrap();
    tx.execute_params(insert, &id("undone")).unwrap();
    tx.rollback_to(&savepoint).unwrap();
    let inner = tx.savepoint().unwrap();
    tx.execute_many_params(insert, &[id("kept-2"), id("kept-3")]).unwrap();
    tx.release(&inner).unwrap();
    // Uncommitted: another connection does not see it.
    assert_eq!(db.get_agent_name("kept").unwrap(), None);
    let seen = tx.query_params("SELECT count(*) FROM agent_executions", &no_params()).unwrap();
    assert_eq!(integer(&seen[0][0]), 3);
    tx.commit().unwrap();
    let ids = db.query("SELECT agent_id FROM agent_executions ORDER BY agent_id", &no_params()).unwrap();
    assert_eq!(ids.iter().map(|r| text(&r[0])).collect::<Vec<_>>(), ["kept", "kept-2", "kept-3"]);

    let mut rolled_back = db.begin().unwrap();
    rolled_back.execute_params(insert, &id("gone")).unwrap();
    rolled_back.rollback().unwrap();
    let mut dropped = db.begin().unwrap();
    dropped.execute_params(insert, &id("dropped")).unwrap();
    drop(dropped);
    // A duplicate key is an IntegrityError, and the failed transaction keeps nothing.
    let mut failing = db.begin().unwrap();
    failing.execute_params(insert, &id("new")).unwrap();
    let duplicate = failing.execute_params(insert, &id("kept"));
    assert!(matches!(duplicate, Err(Error::Integrity(ref m)) if m.contains("23505")), "{duplicate:?}");
    assert!(matches!(failing.execute_params(insert, &id("after")), Err(Error::Transaction(_))));
    drop(failing);
    for gone in ["gone", "dropped", "new", "after"] {
        assert_eq!(db.get_agent_name(gone).unwrap(), None, "{gone}");
    }
    assert_eq!(db.pool_state().0, db.pool_state().1, "every connection is back in the pool");
}

#[test]
fn every_statement_is_bounded_by_statement_timeout_and_one_past_it_keeps_nothing() {
    let Some(cluster) = cluster() else { return };
    let url = fresh_url(cluster, "");
    let db = open(&url);
    let setting = db.query("SHOW statement_timeout", &no_params()).unwrap();
    assert_eq!(text(&setting[0][0]), "30s", "the default deadline");

    let short = PgDatabase::open(
        &format!("{url}%20-cstatement_timeout%3D300"),
        PgOptions { retry: None, ..Default::default() },
    )
    .unwrap();
    let started = Instant::now();
    let slow = short.query("SELECT pg_sleep(10)", &no_params());
    assert!(matches!(slow, Err(Error::Busy(ref m)) if m.contains("statement_timeout")), "{slow:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // A write waiting for another's lock meets the same deadline, and writes nothing.
    let mut holder = db.begin().unwrap();
    holder.execute_params("LOCK TABLE agent_outputs IN EXCLUSIVE MODE", &no_params()).unwrap();
    let started = Instant::now();
    let blocked = short.store_artifact(&artifact("S", "plan", "g", "{}"));
    assert!(matches!(blocked, Err(Error::Busy(_))), "{blocked:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    holder.rollback().unwrap();
    assert_eq!(db.count_artifacts("S", "plan").unwrap(), 0);
    // The store is usable after the cancelled statements.
    short.store_artifact(&artifact("S", "plan", "g", "{}")).unwrap();
    assert_eq!(db.count_artifacts("S", "plan").unwrap(), 1);
}

#[test]
fn bad_input_is_a_typed_error_naming_the_argument_and_writes_nothing() {
    let Some(cluster) = cluster() else { return };
    let url = fresh_url(cluster, "");
    let db = open(&url);
    let named = |r: consensus_db::Result<_>| match r {
        Err(Error::InvalidInput { name, .. }) => name,
        other => panic!("not InvalidInput: {:?}", other.map(|_: ()| ())),
    };
    assert_eq!(named(db.store_artifact(&artifact("S", "plan", "g", "{not json")).map(drop)), "content_json");
    assert_eq!(named(db.store_artifact(&artifact("", "plan", "g", "{}")).map(drop)), "spec_id");
    assert_eq!(named(db.store_artifact(&artifact("S", "plan", "g\0x", "{}")).map(drop)), "agent_name");
    let batch = [artifact("S", "plan", "g", "{}"), artifact("S", "plan", "g", "[1,")];
    assert_eq!(named(db.store_artifacts(&batch).map(drop)), "artifacts[1].content_json");
    assert_eq!(named(db.record_agent_spawn("a", "S", "plan", "bogus_phase", "g", None)), "phase_type");
    assert_eq!(named(db.cleanup_old_executions(-1).map(drop)), "days");
    assert_eq!(
        named(
            db.store_synthesis(&NewSynthesis {
                spec_id: "S".into(),
                stage: "plan".into(),
                artifacts_count: Some(-1),
                ..Default::default()
            })
            .map(drop)
        ),
        "artifacts_count"
    );
    assert_eq!(db.count_artifacts("S", "plan").unwrap(), 0);
    assert_eq!(db.get_agent_name("a").unwrap(), None);
    assert!(db.query_latest_synthesis("S", "plan").unwrap().is_none());
    // A target that is not a URL, and a database the server does not have: `url`, not retried.
    assert_eq!(named(PgDatabase::open("/tmp/some.db", PgOptions::default()).map(drop)), "url");
    let missing = url.replace("/postgres?", "/no_such_database?");
    assert_eq!(named(PgDatabase::open(&missing, PgOptions::default()).map(drop)), "url");
    // The caller's SQL that the server refuses: an error, not a panic.
    assert!(matches!(db.query("SELEC 1", &no_params()), Err(Error::Sqlite(ref m)) if m.contains("42601")));
}

/// Sets `synchronous_standby_names` and waits until new sessions see it.
fn require_standby(cluster: &Cluster, standby: &str) {
    let mut admin = cluster.admin();
    admin.batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = '{standby}'")).unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.admin().query_one("SHOW synchronous_standby_names", &[]).unwrap().get::<_, String>(0) != standby {
        assert!(Instant::now() < deadline, "the server did not reload its configuration");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_commit_waiting_for_a_missing_synchronous_standby_is_not_replicated_and_bounded() {
    if cluster().is_none() {
        return;
    }
    let own = OwnCluster(start().expect("a server of this test's own"));
    let db = PgDatabase::open(&own.0.url("-cstatement_timeout%3D500"), PgOptions::default()).unwrap();
    db.record_agent_spawn("before", "S", "plan", "quality_gate", "gemini", None).unwrap(); // no standby needed yet
    require_standby(&own.0, "standby_that_is_gone");
    let started = Instant::now();
    let spawn = db.record_agent_spawn("during", "S", "plan", "quality_gate", "gemini", None);
    assert!(matches!(spawn, Err(Error::NotReplicated(ref m)) if m.contains("synchronous standby")), "{spawn:?}");
    let mut tx = db.begin().unwrap();
    tx.execute_params(
        "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) \
         VALUES ('in-a-block', 'S', 'plan', 'quality_gate', 'g', '2026-01-01 00:00:00')",
        &no_params(),
    )
    .unwrap();
    let commit = tx.commit();
    assert!(matches!(commit, Err(Error::NotReplicated(_))), "{commit:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());
    require_standby(&own.0, "");
    // Both committed on the primary: "not replicated", not lost.
    assert_eq!(db.get_agent_name("during").unwrap().as_deref(), Some("gemini"));
    assert_eq!(db.get_agent_name("in-a-block").unwrap().as_deref(), Some("g"));
    db.close();
}
