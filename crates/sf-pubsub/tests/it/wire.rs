//! Done when 1: gRPC paths and every message's field numbers.

use expect_test::{Expect, expect};
use sf_pubsub::proto::*;

const GENERATED: &str = include_str!("../../src/generated/eventbus.v1.rs");

#[test]
fn grpc_paths_are_those_of_the_service() {
    for rpc in [
        "Subscribe",
        "GetSchema",
        "GetTopic",
        "Publish",
        "PublishStream",
        "ManagedSubscribe",
    ] {
        let path = format!("\"/eventbus.v1.PubSub/{rpc}\"");
        // Once in the client, once in the server's router.
        assert_eq!(GENERATED.matches(&path).count(), 2, "{path}");
    }
    assert_eq!(pub_sub_server::SERVICE_NAME, "eventbus.v1.PubSub");
}

/// Lists the top-level fields of an encoded message: `number:wire-type=value`.
fn fields(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).unwrap();
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push(format!(
                "{number}:varint={}",
                prost::encoding::decode_varint(&mut buf).unwrap()
            )),
            2 => {
                let len =
                    usize::try_from(prost::encoding::decode_varint(&mut buf).unwrap()).unwrap();
                let (value, rest) = buf.split_at(len);
                buf = rest;
                out.push(match std::str::from_utf8(value) {
                    Ok(s) if s.chars().all(|c| c.is_ascii_graphic()) => {
                        format!("{number}:len={s:?}")
                    }
                    _ => format!("{number}:len=0x{}", hex::encode(value)),
                });
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    out.join(" ")
}

fn check<M: prost::Message + Default + PartialEq + std::fmt::Debug>(msg: M, expect: Expect) {
    let bytes = msg.encode_to_vec();
    expect.assert_eq(&fields(&bytes));
    assert_eq!(M::decode(bytes.as_slice()).unwrap(), msg);
}

fn producer() -> ProducerEvent {
    ProducerEvent {
        id: "id".into(),
        schema_id: "sid".into(),
        payload: vec![0xab],
        headers: vec![EventHeader {
            key: "k".into(),
            value: vec![1],
        }],
    }
}

fn error() -> Error {
    Error {
        code: ErrorCode::Commit as i32,
        msg: "m".into(),
    }
}

#[test]
fn every_message_round_trips_with_the_interop_field_numbers() {
    check(
        TopicInfo {
            topic_name: "t".into(),
            tenant_guid: "g".into(),
            can_publish: true,
            can_subscribe: true,
            schema_id: "s".into(),
            rpc_id: "r".into(),
        },
        expect![[r#"1:len="t" 2:len="g" 3:varint=1 4:varint=1 5:len="s" 6:len="r""#]],
    );
    check(
        TopicRequest {
            topic_name: "t".into(),
        },
        expect![[r#"1:len="t""#]],
    );
    check(
        EventHeader {
            key: "k".into(),
            value: vec![1],
        },
        expect![[r#"1:len="k" 2:len=0x01"#]],
    );
    check(
        producer(),
        expect![[r#"1:len="id" 2:len="sid" 3:len=0xab 4:len=0x0a016b120101"#]],
    );
    check(
        ConsumerEvent {
            event: Some(producer()),
            replay_id: vec![0, 0, 0, 0, 0, 16, 219, 77, 0, 0],
        },
        expect!["1:len=0x0a02696412037369641a01ab22060a016b120101 2:len=0x000000000010db4d0000"],
    );
    check(
        PublishResult {
            replay_id: vec![7],
            error: Some(error()),
            correlation_key: "c".into(),
        },
        expect![[r#"1:len=0x07 2:len=0x080212016d 3:len="c""#]],
    );
    check(error(), expect![[r#"1:varint=2 2:len="m""#]]);
    check(
        FetchRequest {
            topic_name: "t".into(),
            replay_preset: ReplayPreset::Custom as i32,
            replay_id: vec![9],
            num_requested: 100,
            auth_refresh: "a".into(),
        },
        expect![[r#"1:len="t" 2:varint=2 3:len=0x09 4:varint=100 5:len="a""#]],
    );
    check(
        FetchResponse {
            events: vec![ConsumerEvent {
                event: None,
                replay_id: vec![1],
            }],
            latest_replay_id: vec![2],
            rpc_id: "r".into(),
            pending_num_requested: 99,
        },
        expect![[r#"1:len=0x120101 2:len=0x02 3:len="r" 4:varint=99"#]],
    );
    check(
        SchemaRequest {
            schema_id: "s".into(),
        },
        expect![[r#"1:len="s""#]],
    );
    check(
        SchemaInfo {
            schema_json: "{}".into(),
            schema_id: "s".into(),
            rpc_id: "r".into(),
        },
        expect![[r#"1:len="{}" 2:len="s" 3:len="r""#]],
    );
    check(
        PublishRequest {
            topic_name: "t".into(),
            events: vec![ProducerEvent::default()],
            auth_refresh: "a".into(),
        },
        expect![[r#"1:len="t" 2:len="" 3:len="a""#]],
    );
    check(
        PublishResponse {
            results: vec![PublishResult::default()],
            schema_id: "s".into(),
            rpc_id: "r".into(),
        },
        expect![[r#"1:len="" 2:len="s" 3:len="r""#]],
    );
    let commit_request = CommitReplayRequest {
        commit_request_id: "c".into(),
        replay_id: vec![3],
    };
    check(commit_request.clone(), expect![[r#"1:len="c" 2:len=0x03"#]]);
    check(
        ManagedFetchRequest {
            subscription_id: "s".into(),
            developer_name: "d".into(),
            num_requested: 5,
            auth_refresh: "a".into(),
            commit_replay_id_request: Some(commit_request),
        },
        expect![[r#"1:len="s" 2:len="d" 3:varint=5 4:len="a" 5:len=0x0a0163120103"#]],
    );
    let commit_response = CommitReplayResponse {
        commit_request_id: "c".into(),
        replay_id: vec![3],
        error: Some(error()),
        process_time: 1_700_000_000_000,
    };
    check(
        commit_response.clone(),
        expect![[r#"1:len="c" 2:len=0x03 3:len=0x080212016d 4:varint=1700000000000"#]],
    );
    check(
        ManagedFetchResponse {
            events: vec![],
            latest_replay_id: vec![4],
            rpc_id: "r".into(),
            pending_num_requested: 1,
            commit_response: Some(commit_response),
        },
        expect![[
            r#"2:len=0x04 3:len="r" 4:varint=1 5:len=0x0a01631201031a05080212016d2080d095ffbc31"#
        ]],
    );
}

#[test]
fn enum_numbers() {
    assert_eq!(
        [
            ReplayPreset::Latest as i32,
            ReplayPreset::Earliest as i32,
            ReplayPreset::Custom as i32
        ],
        [0, 1, 2]
    );
    assert_eq!(
        [
            ErrorCode::Unknown as i32,
            ErrorCode::Publish as i32,
            ErrorCode::Commit as i32
        ],
        [0, 1, 2]
    );
}
