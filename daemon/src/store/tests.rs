//! The store against real SQLite files: what is recorded reads back the same, IDs are
//! never reused, events wait for their records, retention keeps to its bounds, and a
//! store of the first schema opens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oet_protocol::{
    ActivityState, ActivityStateChange, ActivitySummary, CallRecord, FunctionArgs, LogLine,
    ProcedureState, ProcedureSummary, ScriptSpec, StateChange, Stream, Value,
};

use super::*;
use crate::events::{BusEvent, EventBus, EventConfig, Received};

/// The store file of the first schema, as the first release wrote it.
const FIRST_SCHEMA: &[u8] = include_bytes!("../../../tests/fixtures/store/v1.sqlite");

fn open(dir: &Path, config: &StoreConfig) -> Store {
    Store::open(
        config,
        &dir.join("store/history.sqlite"),
        &dir.join("activities"),
        EventBus::new(EventConfig::default()),
    )
}

fn change(state: ProcedureState, time: f64) -> StateChange {
    StateChange {
        state,
        time,
        function: None,
        note: None,
    }
}

fn procedure(id: u64, created: f64) -> ProcedureSummary {
    ProcedureSummary {
        id,
        script: ScriptSpec::Git {
            script_uri: "git://scripts/observe.py".into(),
            git_args: oet_protocol::GitArgs {
                git_repo: Some("https://example.org/s.git".into()),
                git_branch: None,
                git_commit: Some("abc123".into()),
            },
            create_env: true,
        },
        resources: Some(oet_protocol::ResourceUsage {
            peak_memory_bytes: Some(12 << 20),
            cpu_secs: Some(0.25),
            ..Default::default()
        }),
        checkout: Some(oet_protocol::GitCheckout {
            repo: "https://example.org/s.git".into(),
            branch: Some("main".into()),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
        }),
        calls: vec![CallRecord {
            function: "init".into(),
            args: FunctionArgs {
                args: vec![Value::Int(1), Value::Float(2.5), Value::Null],
                kwargs: BTreeMap::from([(
                    "subarray_id".to_owned(),
                    Value::Map(BTreeMap::from([("x".to_owned(), Value::from("é"))])),
                )]),
            },
            time: created,
        }],
        history: vec![change(ProcedureState::Creating, created)],
        stacktrace: None,
        state: ProcedureState::Creating,
    }
}

/// Records `summary` as created, then walks it through `states`, as the records do.
fn walk(store: &Store, summary: &mut ProcedureSummary, states: &[ProcedureState]) {
    // As the records do: created, then (for a git script) where it was checked out from.
    let created = ProcedureSummary {
        checkout: None,
        ..summary.clone()
    };
    store.record(vec![Record::ProcedureCreated(Arc::new(created))], vec![]);
    if let Some(checkout) = summary.checkout.clone() {
        let id = summary.id;
        store.record(vec![Record::Checkout { id, checkout }], vec![]);
    }
    for (n, state) in states.iter().enumerate() {
        let entered = StateChange {
            function: (*state == ProcedureState::Running).then(|| "main".to_owned()),
            ..change(*state, summary.created_at() + n as f64 + 1.0)
        };
        let mut records = Vec::new();
        if *state == ProcedureState::Running {
            let call = CallRecord {
                function: "main".into(),
                args: FunctionArgs::default(),
                time: entered.time,
            };
            records.push(Record::Call {
                id: summary.id,
                seq: summary.calls.len(),
                call: call.clone(),
            });
            summary.calls.push(call);
        }
        let stacktrace =
            (*state == ProcedureState::Failed).then(|| "Traceback\nValueError".to_owned());
        let output = state.is_final().then(|| KeptOutput {
            dropped: 3,
            lines: vec![LogLine {
                time: entered.time,
                stream: Stream::Stderr,
                line: "a line".into(),
            }],
        });
        records.push(Record::ProcedureState {
            id: summary.id,
            seq: summary.history.len(),
            change: entered.clone(),
            stacktrace: stacktrace.clone(),
            output,
        });
        summary.history.push(entered);
        summary.state = *state;
        if stacktrace.is_some() {
            summary.stacktrace = stacktrace;
        }
        store.record(records, vec![]);
    }
}

#[tokio::test]
async fn what_is_recorded_reads_back_the_same_after_a_reopen() {
    use ProcedureState::*;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &StoreConfig::default());
    let t = oet_protocol::now() - 100.0;
    let mut done = procedure(1, t);
    walk(
        &store,
        &mut done,
        &[Idle, Loading, Idle, Ready, Running, Complete],
    );
    let mut failed = procedure(2, t + 1.0);
    walk(&store, &mut failed, &[Idle, Loading, Failed]);
    store.synced().await;
    assert_eq!(store.procedure(1).expect("read"), Some(done.clone()));
    store.close().await;

    let store = open(dir.path(), &StoreConfig::default());
    assert_eq!(store.procedure(1).expect("read"), Some(done));
    assert_eq!(store.procedure(2).expect("read"), Some(failed));
    assert_eq!(store.procedure(3).expect("read"), None);
    assert_eq!(store.issued().expect("issued"), (2, 0));
    let output = store
        .output(1)
        .expect("read")
        .expect("known")
        .expect("kept");
    assert_eq!(
        (output.dropped, output.lines[0].line.as_str()),
        (3, "a line")
    );
    let page = store
        .procedures(&HistoryQuery {
            state: Some("FAILED"),
            limit: 10,
            ..HistoryQuery::default()
        })
        .expect("page");
    assert_eq!(page.iter().map(|p| p.id).collect::<Vec<_>>(), [2]);
    let newest = store
        .procedures(&HistoryQuery {
            limit: 1,
            ..HistoryQuery::default()
        })
        .expect("page");
    assert_eq!(newest[0].id, 2);
    let older = store
        .procedures(&HistoryQuery {
            before: Some(2),
            since: Some(t - 1.0),
            limit: 10,
            ..HistoryQuery::default()
        })
        .expect("page");
    assert_eq!(older.iter().map(|p| p.id).collect::<Vec<_>>(), [1]);
    store.close().await;
}

#[tokio::test]
async fn events_are_published_after_their_records_are_written_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &StoreConfig::default());
    let mut events = store.bus().subscribe();
    for n in 1..=50u64 {
        let summary = procedure(n, n as f64);
        let seq = store.record(
            vec![Record::ProcedureCreated(Arc::new(summary))],
            vec![BusEvent::Script {
                id: n,
                topic: "user.n".into(),
                payload: Value::Null,
            }],
        );
        assert_eq!(seq, n);
    }
    for n in 1..=50u64 {
        match events.recv().await {
            Received::Event(published) => match published.event() {
                BusEvent::Script { id, .. } => {
                    assert_eq!(*id, n);
                    // Whoever sees the event finds the record on disk.
                    assert!(store.procedure(n).expect("read").is_some(), "{n}");
                }
                other => panic!("unexpected {other:?}"),
            },
            Received::Lagged(n) => panic!("lagged {n}"),
        }
    }
    assert_eq!(store.committed(), 50);
    store.close().await;
}

#[tokio::test]
async fn retention_keeps_to_the_age_and_count_bounds_and_never_removes_live_records() {
    use ProcedureState::*;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        max_age_days: 1.0,
        max_procedures: 3,
        max_activities: 1,
        ..StoreConfig::default()
    };
    // The store's own retention pass runs when it opens, at a moment of its thread's
    // choosing; with no bounds it removes nothing, so the pass below sees every record.
    let unbounded = StoreConfig {
        max_age_days: 0.0,
        max_procedures: 0,
        max_activities: 0,
        ..StoreConfig::default()
    };
    let store = open(dir.path(), &unbounded);
    let now = oet_protocol::now();
    let day = 86_400.0;
    // 1: ended three days ago; 2: live for a week; 3..=7: ended just now.
    let mut old = procedure(1, now - 3.0 * day);
    walk(&store, &mut old, &[Failed]);
    let mut live = procedure(2, now - 7.0 * day);
    walk(&store, &mut live, &[Idle]);
    for id in 3..=7 {
        let mut recent = procedure(id, now - 10.0);
        walk(&store, &mut recent, &[Failed]);
    }
    let sb_dir = dir.path().join("activities");
    std::fs::create_dir_all(&sb_dir).expect("mkdir");
    // Activities 1 and 2 have their SBD files in the SBD directory; 3 names a file
    // outside it, which is never removed, whatever the store says; 4 is the newest
    // ended, 5 is live.
    let outside = dir.path().join("sb-outside.json");
    for id in 1..=5u64 {
        let file = match id {
            3 => outside.clone(),
            _ => sb_dir.join(format!("sb-{id}.json")),
        };
        std::fs::write(&file, "{}").expect("write");
        let state = if id == 5 {
            ActivityState::Requested
        } else {
            ActivityState::Failed
        };
        store.record(
            vec![Record::ActivityCreated {
                summary: Arc::new(activity(id, state, now - 10.0)),
                sb_file: file,
            }],
            vec![],
        );
    }
    store.synced().await;

    let conn = connect(store.path()).expect("connect");
    let removed = retention::enforce(&conn, &config, &sb_dir).expect("retention");
    assert_eq!(
        removed,
        retention::Removed {
            procedures: 3,
            activities: 3
        }
    );
    let all = HistoryQuery {
        limit: 100,
        ..HistoryQuery::default()
    };
    let kept: Vec<u64> = store
        .procedures(&all)
        .expect("page")
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(
        kept,
        [7, 6, 5, 2],
        "the three newest ended, and the live one"
    );
    let kept: Vec<u64> = store
        .activities(&all)
        .expect("page")
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(kept, [5, 4]);
    assert!(!sb_dir.join("sb-1.json").exists());
    assert!(!sb_dir.join("sb-2.json").exists());
    assert!(outside.exists());
    assert!(sb_dir.join("sb-4.json").exists());
    // IDs go on after the highest ever issued, whatever retention removed.
    assert_eq!(store.issued().expect("issued"), (7, 5));
    assert_eq!(
        retention::enforce(&conn, &config, &sb_dir).expect("again"),
        retention::Removed::default()
    );
    store.close().await;
}

fn activity(id: u64, state: ActivityState, requested: f64) -> ActivitySummary {
    let mut history = vec![ActivityStateChange {
        state: ActivityState::Requested,
        time: requested,
    }];
    if state != ActivityState::Requested {
        history.push(ActivityStateChange {
            state,
            time: requested + 1.0,
        });
    }
    ActivitySummary {
        id,
        activity_name: "observe".into(),
        sbd_id: "sbd-1".into(),
        sbi_id: Some(format!("sbi-{id}")),
        procedure_id: Some(id + 2),
        script_args: BTreeMap::new(),
        prepare_only: false,
        history,
        state,
        error: None,
    }
}

#[tokio::test]
async fn a_store_of_the_first_schema_opens_and_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("store/history.sqlite");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, FIRST_SCHEMA).expect("write the fixture");
    // Its records are from 2024: kept whatever their age, for this test.
    let keep_all = StoreConfig {
        max_age_days: 0.0,
        ..StoreConfig::default()
    };
    let store = open(dir.path(), &keep_all);
    assert_eq!(store.problem(), None);
    let conn = connect(&file).expect("connect");
    assert_eq!(schema::version(&conn).expect("version"), schema::CURRENT);

    let done = store.procedure(1).expect("read").expect("procedure 1");
    assert_eq!(done.state, ProcedureState::Complete);
    assert_eq!(done.script.uri(), "file:///opt/oet/scripts/observe.py");
    assert_eq!(done.calls[1].function, "main");
    assert_eq!(
        done.calls[0].args.kwargs.get("subarray_id"),
        Some(&Value::Int(1))
    );
    assert_eq!(
        done.history.iter().map(|c| c.state).collect::<Vec<_>>(),
        [
            ProcedureState::Creating,
            ProcedureState::Idle,
            ProcedureState::Loading,
            ProcedureState::Idle,
            ProcedureState::Initialising,
            ProcedureState::Ready,
            ProcedureState::Running,
            ProcedureState::Complete
        ]
    );
    let failed = store.procedure(2).expect("read").expect("procedure 2");
    assert!(failed.stacktrace.expect("trace").contains("ValueError"));
    let output = store
        .output(1)
        .expect("read")
        .expect("known")
        .expect("kept");
    assert_eq!(output.lines[0].line, "observing NGC 253");
    let interrupted = store.interrupted().expect("read");
    assert_eq!(interrupted.len(), 1);
    assert_eq!((interrupted[0].id, interrupted[0].worker), (3, None));
    let activity = store.activity(1).expect("read").expect("activity 1");
    assert_eq!(activity.sbi_id.as_deref(), Some("sbi-mvp01-20240501-00001"));
    assert_eq!(store.issued().expect("issued"), (3, 1));
    store.close().await;
}

#[tokio::test]
async fn a_corrupt_file_leaves_the_store_unavailable_saying_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("store/history.sqlite");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, vec![0x5a; 8192]).expect("write garbage");
    let store = open(dir.path(), &StoreConfig::default());
    let problem = store.problem().expect("a problem");
    assert!(matches!(problem, StoreError::Corrupt { .. }), "{problem:?}");
    assert!(
        problem.to_string().contains("move the file aside"),
        "{problem}"
    );
    assert_eq!(store.writable(), Err(problem.clone()));
    assert!(store.procedure(1).is_err());
    // Events still flow, in order, though nothing can be recorded.
    let mut events = store.bus().subscribe();
    store.publish(BusEvent::Script {
        id: 1,
        topic: "user.x".into(),
        payload: Value::Null,
    });
    assert!(matches!(events.recv().await, Received::Event(_)));
    store.close().await;
    assert_eq!(
        std::fs::read(&file).expect("read"),
        vec![0x5a; 8192],
        "left as it was"
    );
}

#[tokio::test]
async fn a_store_of_a_newer_oetd_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("store/history.sqlite");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    let conn = connect(&file).expect("connect");
    conn.pragma_update(None, "user_version", schema::CURRENT + 1)
        .expect("version");
    drop(conn);
    let store = open(dir.path(), &StoreConfig::default());
    assert!(matches!(
        store.problem(),
        Some(StoreError::NewerSchema { .. })
    ));
    store.close().await;
}

/// Writes `tests/fixtures/store/v1.sqlite`: a store made by the first schema, with a
/// procedure of each kind of ending, one interrupted, an activity and kept output. Run
/// once when the first schema was released; kept to show how the fixture was made.
#[test]
#[ignore = "writes the fixture; run by hand, once"]
fn write_the_first_schema_fixture() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/store/v1.sqlite");
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut conn = Connection::open(&path).expect("create");
    schema::migrate(&mut conn, 1).expect("the first schema");
    conn.execute_batch(
        r#"
        UPDATE issued_ids SET last_id = 3 WHERE kind = 'procedure';
        UPDATE issued_ids SET last_id = 1 WHERE kind = 'activity';
        INSERT INTO procedures VALUES
            (1, '{"Filesystem":{"script_uri":"file:///opt/oet/scripts/observe.py"}}',
             'file:///opt/oet/scripts/observe.py', 1714564800.0, 'COMPLETE', 1714564810.5, NULL),
            (2, '{"Filesystem":{"script_uri":"file:///opt/oet/scripts/broken.py"}}',
             'file:///opt/oet/scripts/broken.py', 1714564900.0, 'FAILED', 1714564901.0,
             'Traceback (most recent call last):
  File "broken.py", line 2, in init
ValueError: no such subarray'),
            (3, '{"Filesystem":{"script_uri":"file:///opt/oet/scripts/observe.py"}}',
             'file:///opt/oet/scripts/observe.py', 1714565000.0, 'RUNNING', NULL, NULL);
        INSERT INTO procedure_calls VALUES
            (1, 0, 'init', '{"args":[],"kwargs":{"subarray_id":{"Int":1}}}', 1714564800.0),
            (1, 1, 'main', '{"args":[{"String":"NGC 253"}],"kwargs":{"scans":{"Int":2}}}', 1714564805.0),
            (2, 0, 'init', '{"args":[],"kwargs":{"subarray_id":{"Int":9}}}', 1714564900.0),
            (3, 0, 'main', '{"args":[],"kwargs":{}}', 1714565001.0);
        INSERT INTO procedure_states VALUES
            (1, 0, 'CREATING', 1714564800.0, NULL, NULL),
            (1, 1, 'IDLE', 1714564800.1, NULL, NULL),
            (1, 2, 'LOADING', 1714564800.2, NULL, NULL),
            (1, 3, 'IDLE', 1714564800.3, NULL, NULL),
            (1, 4, 'INITIALISING', 1714564800.4, NULL, NULL),
            (1, 5, 'READY', 1714564800.5, NULL, NULL),
            (1, 6, 'RUNNING', 1714564805.0, 'main', NULL),
            (1, 7, 'COMPLETE', 1714564810.5, NULL, NULL),
            (2, 0, 'CREATING', 1714564900.0, NULL, NULL),
            (2, 1, 'IDLE', 1714564900.1, NULL, NULL),
            (2, 2, 'LOADING', 1714564900.2, NULL, NULL),
            (2, 3, 'IDLE', 1714564900.3, NULL, NULL),
            (2, 4, 'INITIALISING', 1714564900.4, NULL, NULL),
            (2, 5, 'FAILED', 1714564901.0, NULL, NULL),
            (3, 0, 'CREATING', 1714565000.0, NULL, NULL),
            (3, 1, 'IDLE', 1714565000.1, NULL, NULL),
            (3, 2, 'LOADING', 1714565000.2, NULL, NULL),
            (3, 3, 'IDLE', 1714565000.3, NULL, NULL),
            (3, 4, 'READY', 1714565000.4, NULL, NULL),
            (3, 5, 'RUNNING', 1714565001.0, 'main', NULL);
        INSERT INTO procedure_output VALUES
            (1, 0, '[{"time":1714564806.0,"stream":"Stdout","line":"observing NGC 253"}]');
        INSERT INTO activities VALUES
            (1, 'observe', 'sbd-mvp01-20240501-00001', 'sbi-mvp01-20240501-00001', 1,
             '{"main":{"args":[],"kwargs":{"scans":{"Int":2}}}}', 0, 1714564799.0, 'COMPLETE',
             1714564810.5, NULL, NULL);
        INSERT INTO activity_states VALUES
            (1, 0, 'REQUESTED', 1714564799.0),
            (1, 1, 'PREPARED', 1714564800.5),
            (1, 2, 'RUNNING', 1714564805.0),
            (1, 3, 'COMPLETE', 1714564810.5);
        "#,
    )
    .expect("the fixture's rows");
    conn.execute_batch("VACUUM").expect("vacuum");
}
