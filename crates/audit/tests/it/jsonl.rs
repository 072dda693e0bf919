//! The JSONL file: format, reopening, torn tails, corrupt lines.

use audit::{AuditLog, Error, JsonlAuditLog, JsonlOptions, SealedRecord, TornTail, verify};

use crate::common::{fill, key, rec};

fn path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("audit.jsonl")
}

#[tokio::test]
async fn one_record_per_line_with_seq_and_hex_mac() {
    let dir = tempfile::tempdir().unwrap();
    let log = JsonlAuditLog::open(path(&dir), key()).await.unwrap();
    let written = fill(&log, 3).await;
    let text = std::fs::read_to_string(path(&dir)).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    for (line, rec) in lines.iter().zip(&written) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], rec.record.seq);
        assert_eq!(v["mac"], rec.mac.to_hex());
        assert_eq!(v["mac"].as_str().unwrap().len(), 64);
        assert!(line.starts_with(r#"{"seq":"#), "{line}");
        let back: SealedRecord = serde_json::from_str(line).unwrap();
        assert_eq!(&back, rec);
    }
}

#[tokio::test]
async fn reopening_resumes_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = JsonlAuditLog::open(path(&dir), key()).await.unwrap();
    fill(&log, 5).await;
    let head = log.head().await.unwrap();
    drop(log);

    let log = JsonlAuditLog::open(path(&dir), key()).await.unwrap();
    assert_eq!(log.head().await.unwrap(), head);
    let next = log.append(rec(6)).await.unwrap();
    assert_eq!(next.record.seq, 6);
    let s = verify(&log, &key()).await.unwrap();
    assert_eq!((s.records, s.last_seq), (6, Some(6)));
}

#[tokio::test]
async fn read_range_pages_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = JsonlAuditLog::open_with(
        path(&dir),
        key(),
        JsonlOptions {
            sync_each_append: false,
            ..JsonlOptions::default()
        },
    )
    .await
    .unwrap();
    fill(&log, 25).await;
    let seqs = |v: Vec<SealedRecord>| v.iter().map(|r| r.record.seq).collect::<Vec<_>>();
    assert_eq!(seqs(log.read_range(0, 3).await.unwrap()), [1, 2, 3]);
    assert_eq!(seqs(log.read_range(10, 4).await.unwrap()), [10, 11, 12, 13]);
    assert_eq!(seqs(log.read_range(24, 10).await.unwrap()), [24, 25]);
    assert!(log.read_range(26, 10).await.unwrap().is_empty());
    assert!(log.read_range(5, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn torn_final_line_is_reported_then_repairable() {
    let dir = tempfile::tempdir().unwrap();
    let log = JsonlAuditLog::open(path(&dir), key()).await.unwrap();
    fill(&log, 4).await;
    drop(log);
    let intact_len = std::fs::metadata(path(&dir)).unwrap().len();
    // A crash half-way through writing line 5.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path(&dir))
        .unwrap();
    std::io::Write::write_all(&mut f, br#"{"seq":5,"at":"2026-0"#).unwrap();
    drop(f);

    match JsonlAuditLog::open(path(&dir), key()).await {
        Err(Error::TornTail { line, offset, .. }) => {
            assert_eq!((line, offset), (5, intact_len));
        }
        other => panic!("expected TornTail, got {other:?}"),
    }
    let err = JsonlAuditLog::open(path(&dir), key()).await.unwrap_err();
    assert!(err.to_string().contains("torn line 5"), "{err}");
    assert_eq!(err.class(), audit::ErrorClass::Reconfigure);

    let repair = JsonlOptions {
        repair_torn_tail: true,
        ..JsonlOptions::default()
    };
    let log = JsonlAuditLog::open_with(path(&dir), key(), repair)
        .await
        .unwrap();
    assert_eq!(
        log.repaired(),
        Some(TornTail {
            line: 5,
            offset: intact_len,
            len: 21
        })
    );
    assert_eq!(std::fs::metadata(path(&dir)).unwrap().len(), intact_len);
    assert_eq!(log.append(rec(5)).await.unwrap().record.seq, 5);
    assert_eq!(verify(&log, &key()).await.unwrap().records, 5);
}

#[tokio::test]
async fn a_complete_final_line_without_newline_counts_as_torn() {
    let dir = tempfile::tempdir().unwrap();
    let log = JsonlAuditLog::open(path(&dir), key()).await.unwrap();
    fill(&log, 2).await;
    drop(log);
    let text = std::fs::read_to_string(path(&dir)).unwrap();
    std::fs::write(path(&dir), text.trim_end()).unwrap();
    assert!(matches!(
        JsonlAuditLog::open(path(&dir), key()).await,
        Err(Error::TornTail { line: 2, .. })
    ));
}

#[tokio::test]
async fn corrupt_line_in_the_middle_is_not_mistaken_for_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = JsonlAuditLog::open(path(&dir), key()).await.unwrap();
    fill(&log, 3).await;
    drop(log);
    let text = std::fs::read_to_string(path(&dir)).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1] = r#"{"seq":2,"customer_number":"Jane Doe"}"#;
    std::fs::write(path(&dir), lines.join("\n") + "\n").unwrap();
    let repair = JsonlOptions {
        repair_torn_tail: true,
        ..JsonlOptions::default()
    };
    match JsonlAuditLog::open_with(path(&dir), key(), repair).await {
        Err(e @ Error::Corrupt { line: 2, .. }) => {
            assert!(!e.to_string().contains("Jane"), "value echoed: {e}");
        }
        other => panic!("expected Corrupt at line 2, got {other:?}"),
    }
}

#[tokio::test]
async fn anchor_line_is_only_allowed_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = JsonlAuditLog::open(path(&dir), key()).await.unwrap();
    fill(&log, 2).await;
    drop(log);
    let mut text = std::fs::read_to_string(path(&dir)).unwrap();
    text.push_str(&serde_json::json!({ "anchor": audit::Anchor::GENESIS }).to_string());
    text.push('\n');
    std::fs::write(path(&dir), text).unwrap();
    assert!(matches!(
        JsonlAuditLog::open(path(&dir), key()).await,
        Err(Error::Corrupt { line: 3, .. })
    ));
}

#[tokio::test]
async fn missing_directory_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("no/such/dir/audit.jsonl");
    let err = JsonlAuditLog::open(&p, key()).await.unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("no/such/dir"), "{err}");
    assert_eq!(err.class(), audit::ErrorClass::Retry);
}
