//! The life of a procedure as an operator sees it: states in order, failures with their
//! stack traces, and arguments arriving as the right Python types.

use std::collections::BTreeMap;

use oet_protocol::{FunctionArgs, ProcedureState::*, ScriptSpec, Value};
use oet_tests::{assert_failed_with, assert_state, kwargs, positional, states, TestDaemon};

const INIT_AND_MAIN: &str = r#"
def init(subarray_id):
    print(f"init for subarray {subarray_id}")

def main():
    print("main ran")
"#;

#[tokio::test]
async fn init_and_main_go_through_every_state_in_order() {
    let daemon = TestDaemon::start();
    let uri = daemon.script("observe.py", INIT_AND_MAIN);
    let init = kwargs(&[("subarray_id", Value::Int(1))]);
    let ready = daemon.create_ready(&uri, init).await;
    assert_eq!(
        states(&ready),
        [Creating, Idle, Loading, Idle, Initialising, Ready]
    );

    let done = daemon.run_main(ready.id, FunctionArgs::default()).await;
    assert_eq!(
        states(&done),
        [
            Creating,
            Idle,
            Loading,
            Idle,
            Initialising,
            Ready,
            Running,
            Complete
        ]
    );
    let times: Vec<f64> = done.history.iter().map(|c| c.time).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "state times must not go backwards: {times:?}"
    );
    daemon.assert_printed(ready.id, "init for subarray 1").await;
}

#[tokio::test]
async fn a_script_without_init_skips_initialising() {
    let daemon = TestDaemon::start();
    let ready = daemon
        .ready_script("no_init.py", "def main():\n    pass\n")
        .await;
    assert_eq!(states(&ready), [Creating, Idle, Loading, Idle, Ready]);
}

#[tokio::test]
async fn an_exception_in_main_fails_with_its_stack_trace() {
    let daemon = TestDaemon::start();
    let failed = daemon
        .run_script(
            "fails.py",
            "def main():\n    raise Exception(\"Script failed!\")\n",
        )
        .await;
    assert_failed_with(&failed, &["Script failed!", "fails.py"]);
}

#[tokio::test]
async fn a_missing_script_is_refused_naming_the_file_and_records_nothing() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let err = client
        .create(
            ScriptSpec::filesystem("file:///does/not/exist.py"),
            FunctionArgs::default(),
        )
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(message.starts_with("invalid request"), "{message}");
    assert!(message.contains("/does/not/exist.py"), "{message}");
    assert!(client.list(vec![]).await.expect("list").is_empty());
}

#[tokio::test]
async fn arguments_of_every_kind_arrive_as_python_types_and_come_back_unchanged() {
    let daemon = TestDaemon::start();
    let uri = daemon.script(
        "types.py",
        r#"
EXPECTED = {"null": type(None), "bool": bool, "int": int, "float": float,
            "string": str, "list": list, "map": dict}

def check(values):
    for name, value in values.items():
        if type(value) is not EXPECTED[name]:
            raise TypeError(f"{name}: got {type(value).__name__} {value!r}")

def init(*args, **kwargs):
    assert args == (1, 2.5, "three", None, True, [1, [2]], {"k": "v"}), args
    check(kwargs)

def main(*args, **kwargs):
    assert args == (-7,), args
    check(kwargs)
    assert kwargs["map"] == {"nested": [1.5, None, {"deep": False}]}, kwargs["map"]
"#,
    );
    let kwargs: BTreeMap<String, Value> = BTreeMap::from([
        ("null".into(), Value::Null),
        ("bool".into(), Value::Bool(false)),
        ("int".into(), Value::Int(42)),
        ("float".into(), Value::Float(1.0)),
        ("string".into(), Value::from("héllo")),
        (
            "list".into(),
            Value::List(vec![Value::Int(1), Value::from("x")]),
        ),
        (
            "map".into(),
            Value::Map(BTreeMap::from([(
                "nested".into(),
                Value::List(vec![
                    Value::Float(1.5),
                    Value::Null,
                    Value::Map(BTreeMap::from([("deep".into(), Value::Bool(false))])),
                ]),
            )])),
        ),
    ]);
    let init = FunctionArgs {
        args: vec![
            Value::Int(1),
            Value::Float(2.5),
            Value::from("three"),
            Value::Null,
            Value::Bool(true),
            Value::List(vec![Value::Int(1), Value::List(vec![Value::Int(2)])]),
            Value::Map(BTreeMap::from([("k".into(), Value::from("v"))])),
        ],
        kwargs: kwargs.clone(),
    };
    let ready = daemon.create_ready(&uri, init.clone()).await;
    assert_state(&ready, Ready);

    let main_args = FunctionArgs {
        args: vec![Value::Int(-7)],
        kwargs,
    };
    let done = daemon.run_main(ready.id, main_args.clone()).await;
    assert_state(&done, Complete);
    let script_args = done.script_args();
    assert_eq!(script_args.get("init"), Some(&init));
    assert_eq!(script_args.get("main"), Some(&main_args));
}

#[tokio::test]
async fn a_wrong_uri_prefix_is_refused_without_creating_anything() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let err = client
        .create(
            ScriptSpec::filesystem("git://x.py"),
            FunctionArgs::default(),
        )
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("file://"), "{err}");
    assert!(client.list(vec![]).await.expect("list").is_empty());
}

#[tokio::test]
async fn the_list_keeps_the_newest_ended_and_every_live_procedure_and_the_rest_stays_readable() {
    let daemon = TestDaemon::start_with("history_size = 2");
    let live = daemon
        .ready_script("live.py", "def main():\n    pass\n")
        .await;
    let mut ended = Vec::new();
    for name in ["one", "two", "three"] {
        let failed = daemon
            .ready_script(
                &format!("{name}.py"),
                "raise RuntimeError('fails on import')\n",
            )
            .await;
        assert_eq!(failed.state, Failed);
        ended.push(failed);
    }
    let mut client = daemon.client().await;
    let ids: Vec<u64> = client
        .list(vec![])
        .await
        .expect("list")
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [live.id, ended[1].id, ended[2].id]);
    // The oldest left the list, not the history.
    let oldest = client.describe(ended[0].id).await.expect("from the store");
    assert_eq!(oldest, ended[0]);
    let err = client.describe(99).await.expect_err("never issued");
    assert!(err.to_string().starts_with("not found"), "{err}");
}

#[tokio::test]
async fn an_overlong_output_line_is_noted_and_the_script_goes_on_printing() {
    let daemon = TestDaemon::start_with("log_lines = 10000");
    // Far more than a pipe holds follows the long line: were the output no longer read
    // after it, the script would block for ever on its next print.
    let done = daemon
        .run_script(
            "chatty.py",
            "def main():\n    print('x' * 100000)\n    for i in range(3000):\n        print(f'line {i:040d}')\n    print('all printed')\n",
        )
        .await;
    assert_eq!(done.state, Complete, "{:?}", done.stacktrace);
    let output = daemon.output(done.id).await;
    assert!(
        output.iter().any(|l| l.contains("was dropped")),
        "{:?}",
        output.first()
    );
    daemon.assert_printed(done.id, "all printed").await;
}

#[tokio::test]
async fn only_the_newest_log_lines_are_kept_and_the_rest_are_counted() {
    let daemon = TestDaemon::start_with("log_lines = 3");
    let done = daemon
        .run_script(
            "counting.py",
            "def main():\n    for i in range(10):\n        print(f'line {i}')\n",
        )
        .await;
    assert_eq!(done.state, Complete, "{:?}", done.stacktrace);
    let logs = daemon.client().await.logs(done.id).await.expect("logs");
    let kept: Vec<&str> = logs.lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(kept, ["line 7", "line 8", "line 9"]);
    assert_eq!(logs.dropped, 7);
}

#[tokio::test]
async fn arguments_json_cannot_carry_are_refused_by_create_and_start() {
    let daemon = TestDaemon::start();
    let uri = daemon.script("noop.py", "def main(*args, **kwargs):\n    pass\n");
    let mut client = daemon.client().await;
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = client
            .create(
                ScriptSpec::filesystem(&uri),
                kwargs(&[("x", Value::Float(bad))]),
            )
            .await
            .expect_err("a non-finite init argument is refused");
        assert!(err.to_string().starts_with("invalid request"), "{err}");
    }
    assert!(
        client.list(vec![]).await.expect("list").is_empty(),
        "nothing was created"
    );

    let ready = daemon.create_ready(&uri, FunctionArgs::default()).await;
    let err = client
        .start(
            ready.id,
            "main",
            positional(vec![Value::List(vec![Value::Float(f64::NAN)])]),
        )
        .await
        .expect_err("a non-finite argument of main is refused");
    assert!(err.to_string().starts_with("invalid request"), "{err}");
    assert_eq!(
        client.describe(ready.id).await.expect("describe").state,
        Ready
    );
}

#[tokio::test]
async fn init_called_without_arguments_is_a_call_too() {
    let daemon = TestDaemon::start();
    let ready = daemon
        .ready_script(
            "bare.py",
            "def init():\n    pass\n\ndef main():\n    pass\n",
        )
        .await;
    assert_state(&ready, Ready);
    let calls: Vec<&str> = ready.calls.iter().map(|c| c.function.as_str()).collect();
    assert_eq!(calls, ["init"], "{:?}", ready.calls);
    assert!(ready.calls[0].args.is_empty());
    let json = oet_protocol::view::procedure(&ready).to_json_lossy();
    assert_eq!(json["calls"][0]["function"], "init", "{json}");
    assert!(json["script_args"]["init"].is_object(), "{json}");

    // A script without init is not said to have had it called.
    let plain = daemon
        .ready_script("plain.py", "def main():\n    pass\n")
        .await;
    assert!(plain.calls.is_empty(), "{:?}", plain.calls);
}
