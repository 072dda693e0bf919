//! Retention: purge keeps an anchor, what remains verifies, on both backends.

use audit::{
    Action, Actor, Anchor, AuditLog, DetailKey, JsonlAuditLog, MemoryAuditLog, RetentionPolicy,
    Tamper, verify,
};
use chrono::TimeDelta;

use crate::common::{fill, key, rec, t0, tampered};

fn day(d: i64) -> chrono::DateTime<chrono::Utc> {
    t0() + TimeDelta::days(d) + TimeDelta::hours(12)
}

/// Ten records, purged twice and then entirely; verify succeeds after each purge.
async fn purge_then_verify(log: &dyn AuditLog) {
    let records = fill(log, 10).await;

    // Nothing is old enough: still audited, anchor unchanged.
    let none = log.purge(t0(), Actor::RETENTION).await.unwrap();
    assert_eq!((none.removed, none.anchor), (0, Anchor::GENESIS));
    assert_eq!(none.record.record.seq, 11);
    assert_eq!(verify(log, &key()).await.unwrap().records, 11);

    // Records 1..=5 are older than day 5 + 12h.
    let p = log.purge(day(5), Actor::RETENTION).await.unwrap();
    assert_eq!(p.removed, 5);
    assert_eq!(p.anchor, Anchor::at(&records[4]));
    assert_eq!(p.anchor.removed, 5);
    let r = &p.record.record;
    assert_eq!(
        (r.seq, &r.action, &r.actor),
        (12, &Action::RETENTION_PURGE, &Actor::RETENTION)
    );
    assert_eq!(r.details.get(DetailKey::AnchorSeq), Some("5"));
    assert_eq!(
        r.details.get(DetailKey::AnchorMac),
        Some(records[4].mac.to_hex().as_str())
    );
    assert_eq!(r.details.get(DetailKey::Count), Some("5"));
    assert_eq!(log.anchor().await.unwrap(), p.anchor);
    let s = verify(log, &key()).await.unwrap();
    assert_eq!((s.records, s.first_seq, s.last_seq), (7, Some(6), Some(12)));
    assert_eq!(s.anchor, p.anchor);

    // read_range from below the anchor starts at the first remaining record.
    let page = log.read_range(1, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|r| r.record.seq).collect::<Vec<_>>(),
        [6, 7]
    );

    // A second purge moves the anchor on; the first purge record (seq 11, stamped now) stops it
    // from going past record 10 even though later cutoffs would allow more.
    let p2 = log.purge(day(8), Actor::RETENTION).await.unwrap();
    assert_eq!((p2.removed, p2.anchor.seq, p2.anchor.removed), (3, 8, 8));
    let s = verify(log, &key()).await.unwrap();
    assert_eq!((s.first_seq, s.last_seq), (Some(9), Some(13)));

    // Purge everything: the anchor is the last record, only the new purge record remains.
    let far = chrono::Utc::now() + TimeDelta::days(1);
    let all = log.purge(far, Actor::RETENTION).await.unwrap();
    assert_eq!((all.removed, all.anchor.seq), (5, 13));
    let s = verify(log, &key()).await.unwrap();
    assert_eq!(
        (s.records, s.first_seq, s.last_seq),
        (1, Some(14), Some(14))
    );
    assert_eq!(log.head().await.unwrap().seq, 14);

    // Appending after a purge continues the chain.
    log.append(rec(99)).await.unwrap();
    assert_eq!(verify(log, &key()).await.unwrap().last_seq, Some(15));
}

#[tokio::test]
async fn memory_purge_then_verify() {
    purge_then_verify(&MemoryAuditLog::new(key())).await;
}

#[tokio::test]
async fn jsonl_purge_then_verify_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    purge_then_verify(&log).await;
    let head = log.head().await.unwrap();
    drop(log);

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(r#"{"anchor":{"seq":13,"#), "{text}");
    assert_eq!(text.lines().count(), 3);
    assert!(!dir.path().join("audit.jsonl.purge-tmp").exists());

    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    assert_eq!(log.head().await.unwrap(), head);
    assert_eq!(log.anchor().await.unwrap().seq, 13);
    let s = verify(&log, &key()).await.unwrap();
    assert_eq!(
        (s.records, s.first_seq, s.last_seq),
        (2, Some(14), Some(15))
    );
}

#[tokio::test]
async fn purge_removes_only_a_prefix_when_clocks_went_backwards() {
    let log = MemoryAuditLog::new(key());
    for d in [1, 2, 10, 3, 4] {
        log.append(rec(1).at(day(d))).await.unwrap();
    }
    let p = log.purge(day(5), Actor::RETENTION).await.unwrap();
    assert_eq!((p.removed, p.anchor.seq), (2, 2));
    assert_eq!(verify(&log, &key()).await.unwrap().first_seq, Some(3));
}

#[tokio::test]
async fn retention_policy_purges_records_older_than_its_days() {
    let log = MemoryAuditLog::new(key());
    fill(&log, 10).await;
    let policy = RetentionPolicy::from_days(3).unwrap();
    // now = day 10 + 12h, cutoff = day 7 + 12h: records 1..=7 go.
    let p = policy.apply(&log, day(10), Actor::RETENTION).await.unwrap();
    assert_eq!(p.removed, 7);
    assert_eq!(verify(&log, &key()).await.unwrap().first_seq, Some(8));
}

async fn purged_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("audit.jsonl");
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    fill(&log, 6).await;
    log.purge(day(3), Actor::RETENTION).await.unwrap();
    verify(&log, &key()).await.unwrap();
    path
}

fn edit(path: &std::path::Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    f(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn forged_anchor_without_purge_record_is_detected() {
    // An attacker deletes records 1..=3 of an unpurged log and writes a matching anchor.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    let records = fill(&log, 6).await;
    drop(log);
    edit(&path, |lines| {
        lines.drain(..3);
        let anchor = serde_json::json!({ "anchor": Anchor::at(&records[2]) });
        lines.insert(0, anchor.to_string());
    });
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    assert_eq!(log.anchor().await.unwrap().seq, 3);
    assert_eq!(
        tampered(verify(&log, &key()).await),
        (3, Tamper::AnchorUnattested)
    );
}

#[tokio::test]
async fn removing_the_purge_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = purged_file(&dir).await;
    edit(&path, |lines| {
        lines.pop();
    });
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    assert_eq!(
        tampered(verify(&log, &key()).await),
        (3, Tamper::AnchorUnattested)
    );
}

#[tokio::test]
async fn modified_anchor_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = purged_file(&dir).await;
    edit(&path, |lines| {
        let mut v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        v["anchor"]["mac"] = serde_json::Value::String("11".repeat(32));
        lines[0] = v.to_string();
    });
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    assert_eq!(
        tampered(verify(&log, &key()).await),
        (4, Tamper::AnchorMismatch)
    );

    // Moving the anchor back so that it no longer matches its count.
    let dir = tempfile::tempdir().unwrap();
    let path = purged_file(&dir).await;
    edit(&path, |lines| {
        let mut v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        v["anchor"]["removed"] = serde_json::Value::from(1);
        lines[0] = v.to_string();
    });
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    assert_eq!(
        tampered(verify(&log, &key()).await),
        (4, Tamper::AnchorMismatch)
    );
}

#[tokio::test]
async fn purge_with_an_extreme_cutoff_removes_everything_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    for log in [
        Box::new(MemoryAuditLog::new(key())) as Box<dyn AuditLog>,
        Box::new(
            JsonlAuditLog::open(dir.path().join("a.jsonl"), key())
                .await
                .unwrap(),
        ),
    ] {
        fill(log.as_ref(), 4).await;
        let p = log
            .purge(chrono::DateTime::<chrono::Utc>::MAX_UTC, Actor::OPERATOR)
            .await
            .unwrap();
        assert_eq!((p.removed, p.anchor.seq), (4, 4));
        assert_eq!(p.record.record.details.get(DetailKey::Cutoff), None);
        let s = verify(log.as_ref(), &key()).await.unwrap();
        assert_eq!((s.records, s.first_seq), (1, Some(5)));
    }
}
