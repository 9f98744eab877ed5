//! Micro-benchmarks of the codec: the frames oetd writes most (an event, fanned out once
//! for every subscriber), the largest answer operators ask for often (the list of 500
//! procedures), and how fast a hostile frame (a value nested too deep) is refused.
//!
//! `cargo bench -p oet-protocol --bench codec`; the figures are in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use oet_protocol::codec::{decode, encode, encode_frame, DEFAULT_MAX_FRAME};
use oet_protocol::value::MAX_DEPTH;
use oet_protocol::{
    CallRecord, Event, FunctionArgs, ListProcedures, ProcedureState, ProcedureSummary,
    ResponseBody, ScriptSpec, ServerMessage, StateChange, Value,
};

fn summary(id: u64) -> ProcedureSummary {
    let args = FunctionArgs {
        args: vec![Value::from("NGC 253"), Value::Float(1.5)],
        kwargs: BTreeMap::from([("subarray_id".to_owned(), Value::Int(1))]),
    };
    let states = [
        ProcedureState::Creating,
        ProcedureState::Idle,
        ProcedureState::Loading,
        ProcedureState::Idle,
        ProcedureState::Initialising,
        ProcedureState::Ready,
    ];
    ProcedureSummary {
        id,
        script: ScriptSpec::filesystem(format!("file:///opt/oet/scripts/observe_{id}.py")),
        checkout: None,
        calls: vec![CallRecord {
            function: "init".into(),
            args,
            time: 1.7e9,
        }],
        history: states
            .iter()
            .enumerate()
            .map(|(n, &state)| StateChange {
                state,
                time: 1.7e9 + n as f64,
                function: None,
                note: None,
            })
            .collect(),
        stacktrace: None,
        state: ProcedureState::Ready,
        resources: None,
    }
}

fn lifecycle_event() -> ServerMessage {
    let payload = BTreeMap::from([
        ("procedure_id".to_owned(), Value::Int(42)),
        ("new_state".to_owned(), Value::from("RUNNING")),
        ("function".to_owned(), Value::from("main")),
    ]);
    ServerMessage::Event(Event {
        topic: "procedure.lifecycle.statechange".into(),
        msg_src: "oetd".into(),
        time: 1.7e9,
        payload: Value::Map(payload),
    })
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::Null, |inner, _| Value::List(vec![inner]))
}

fn codec(c: &mut Criterion) {
    let event = lifecycle_event();
    c.bench_function("encode_frame lifecycle event", |b| {
        b.iter(|| encode_frame(black_box(&event), DEFAULT_MAX_FRAME))
    });
    let frame = encode(&event).expect("encode");
    c.bench_function("decode lifecycle event", |b| {
        b.iter(|| decode::<ServerMessage>(black_box(&frame)))
    });

    let list = ServerMessage::Response {
        id: 1,
        result: Ok(ResponseBody::ListProcedures(Box::new(
            (1..=500).map(summary).collect(),
        ))),
    };
    c.bench_function("encode list of 500 procedures", |b| {
        b.iter(|| encode(black_box(&list)))
    });
    let bytes = encode(&list).expect("encode");
    c.bench_function("decode list of 500 procedures", |b| {
        b.iter(|| decode::<ServerMessage>(black_box(&bytes)))
    });

    let request = oet_protocol::ClientMessage::Request(oet_protocol::Request {
        id: 7,
        body: oet_protocol::RequestBody::ListProcedures(ListProcedures::default()),
    });
    let request = encode(&request).expect("encode");
    c.bench_function("decode list request", |b| {
        b.iter(|| decode::<oet_protocol::ClientMessage>(black_box(&request)))
    });

    // A value one level too deep: refused, however the rest of the frame looks.
    let hostile = encode(&nested(MAX_DEPTH + 1)).expect("encode");
    c.bench_function("refuse a value nested too deep", |b| {
        b.iter_batched(
            || hostile.clone(),
            |bytes| decode::<Value>(&bytes).expect_err("too deep"),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
