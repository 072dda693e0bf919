//! Verify detects every kind of tampering, on the in-memory records and on the JSONL file
//! edited on disk.

use audit::{
    Anchor, AuditKey, AuditLog, DetailKey, JsonlAuditLog, JsonlOptions, Mac, MemoryAuditLog,
    Outcome, SealedRecord, Tamper, canonical_bytes, compute_mac, verify, verify_records,
};
use sha2::{Digest, Sha256};

use crate::common::{fill, key, tampered};

const N: u64 = 8;

#[derive(Debug, Clone, Copy)]
enum Tampering {
    /// Change record `seq`'s outcome.
    ModifyOutcome(u64),
    /// Change a detail of record `seq`.
    ModifyDetail(u64),
    /// Delete record `seq`.
    Delete(u64),
    /// Swap the stored positions of records `seq` and `seq + 1`.
    SwapPositions(u64),
    /// Swap the contents of records `seq` and `seq + 1`, keeping sequence numbers in order.
    SwapContents(u64),
    /// Insert a made-up record as `seq`, renumbering the rest.
    InsertForged(u64),
    /// Store a copy of record `seq` again right after it.
    InsertDuplicate(u64),
    /// Add a made-up record after the last one.
    AppendForged,
    /// Modify record `seq` and recompute the chain from there with plain SHA-256.
    Sha256Rewrite(u64),
    /// Recompute the whole chain with plain SHA-256 from the genesis.
    Sha256FromGenesis,
}

fn pos(seq: u64) -> usize {
    usize::try_from(seq - 1).unwrap()
}

fn sha256_chain(records: &mut [SealedRecord], prev: Mac) {
    let mut prev = prev;
    for r in records {
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(canonical_bytes(&r.record));
        r.mac = Mac(h.finalize().into());
        prev = r.mac;
    }
}

fn apply(t: Tampering, rs: &mut Vec<SealedRecord>) {
    match t {
        Tampering::ModifyOutcome(s) => rs[pos(s)].record.outcome = Outcome::Failed,
        Tampering::ModifyDetail(s) => rs[pos(s)]
            .record
            .details
            .insert(DetailKey::WhmcsOrderId, "99999")
            .unwrap(),
        Tampering::Delete(s) => {
            rs.remove(pos(s));
        }
        Tampering::SwapPositions(s) => rs.swap(pos(s), pos(s) + 1),
        Tampering::SwapContents(s) => {
            let (a, b) = (pos(s), pos(s) + 1);
            rs.swap(a, b);
            rs[a].record.seq = s;
            rs[b].record.seq = s + 1;
        }
        Tampering::InsertForged(s) => {
            let mut forged = rs[pos(s)].clone();
            forged.record.outcome = Outcome::Refused;
            forged.mac = Mac([0xab; 32]);
            rs.insert(pos(s), forged);
            for r in &mut rs[pos(s) + 1..] {
                r.record.seq += 1;
            }
        }
        Tampering::InsertDuplicate(s) => {
            let copy = rs[pos(s)].clone();
            rs.insert(pos(s) + 1, copy);
        }
        Tampering::AppendForged => {
            let mut forged = rs.last().unwrap().clone();
            forged.record.seq += 1;
            rs.push(forged);
        }
        Tampering::Sha256Rewrite(s) => {
            rs[pos(s)].record.outcome = Outcome::Failed;
            let prev = if s == 1 {
                Mac::ZERO
            } else {
                rs[pos(s) - 1].mac
            };
            sha256_chain(&mut rs[pos(s)..], prev);
        }
        Tampering::Sha256FromGenesis => sha256_chain(rs, Mac::ZERO),
    }
}

/// Every tampering with the `(seq, reason)` verify must report.
fn cases() -> Vec<(Tampering, u64, Tamper)> {
    use Tampering::*;
    vec![
        (ModifyOutcome(3), 3, Tamper::MacMismatch),
        (ModifyDetail(1), 1, Tamper::MacMismatch),
        (ModifyDetail(N), N, Tamper::MacMismatch),
        (Delete(5), 5, Tamper::Missing { next_found: 6 }),
        (Delete(1), 1, Tamper::Missing { next_found: 2 }),
        (SwapPositions(3), 3, Tamper::OutOfOrder { after: 4 }),
        (SwapContents(3), 3, Tamper::MacMismatch),
        (InsertForged(4), 4, Tamper::MacMismatch),
        (InsertDuplicate(3), 3, Tamper::OutOfOrder { after: 3 }),
        (AppendForged, N + 1, Tamper::MacMismatch),
        (Sha256Rewrite(3), 3, Tamper::MacMismatch),
        (Sha256FromGenesis, 1, Tamper::MacMismatch),
    ]
}

async fn memory_chain() -> (AuditKey, Vec<SealedRecord>) {
    let log = MemoryAuditLog::new(key());
    fill(&log, N).await;
    let (anchor, records) = log.snapshot().unwrap();
    assert_eq!(anchor, Anchor::GENESIS);
    (key(), records)
}

#[tokio::test]
async fn memory_records_detect_every_tampering() {
    let (k, records) = memory_chain().await;
    verify_records(&k, &Anchor::GENESIS, &records).unwrap();
    for (t, seq, reason) in cases() {
        let mut rs = records.clone();
        apply(t, &mut rs);
        assert_eq!(
            tampered(verify_records(&k, &Anchor::GENESIS, &rs)),
            (seq, reason),
            "{t:?}"
        );
    }
}

#[tokio::test]
async fn resealing_with_the_real_key_is_accepted() {
    // Control: the tampering helpers produce well-formed chains; what makes the SHA-256
    // rewrite fail is the missing key, not a malformed edit.
    let (k, mut rs) = memory_chain().await;
    rs[2].record.outcome = Outcome::Failed;
    let mut prev = rs[1].mac;
    for r in &mut rs[2..] {
        r.mac = compute_mac(&k, &prev, &r.record);
        prev = r.mac;
    }
    let s = verify_records(&k, &Anchor::GENESIS, &rs).unwrap();
    assert_eq!(s.records, N);
}

async fn jsonl_log(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("audit.jsonl");
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    fill(&log, N).await;
    verify(&log, &key()).await.unwrap();
    path
}

fn read_records(path: &std::path::Path) -> Vec<SealedRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_records(path: &std::path::Path, rs: &[SealedRecord]) {
    let mut text = String::new();
    for r in rs {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn jsonl_file_edits_are_detected() {
    for (t, seq, reason) in cases() {
        let dir = tempfile::tempdir().unwrap();
        let path = jsonl_log(&dir).await;
        let mut rs = read_records(&path);
        apply(t, &mut rs);
        write_records(&path, &rs);
        let log = JsonlAuditLog::open(&path, key()).await.unwrap();
        assert_eq!(tampered(verify(&log, &key()).await), (seq, reason), "{t:?}");
    }
}

#[tokio::test]
async fn raw_text_edits_of_the_file_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = jsonl_log(&dir).await;
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();

    // Change one character of a value on line 6.
    let edited = lines[5].replacen("accept_order", "accept_ordex", 1);
    assert_ne!(edited, lines[5]);
    let mut text: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    text[5] = edited;
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    assert_eq!(
        tampered(verify(&log, &key()).await),
        (6, Tamper::MacMismatch)
    );

    // Delete line 2 outright.
    let mut text: Vec<&str> = lines.clone();
    text.remove(1);
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    assert_eq!(
        tampered(verify(&log, &key()).await),
        (2, Tamper::Missing { next_found: 3 })
    );

    // Unedited file verifies.
    std::fs::write(&path, &original).unwrap();
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    assert_eq!(verify(&log, &key()).await.unwrap().records, N);
}

#[tokio::test]
async fn wrong_key_fails_at_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = jsonl_log(&dir).await;
    let other = AuditKey::from_bytes(&[7; 32]).unwrap();
    let log = JsonlAuditLog::open_with(&path, other.clone(), JsonlOptions::default())
        .await
        .unwrap();
    assert_eq!(
        tampered(verify(&log, &other).await),
        (1, Tamper::MacMismatch)
    );
}

#[tokio::test]
async fn cutting_the_tail_is_visible_only_against_a_saved_head() {
    // A hash chain cannot notice its newest records being cut off; the head kept elsewhere can.
    let log = MemoryAuditLog::new(key());
    fill(&log, N).await;
    let saved_head = log.head().await.unwrap();
    let (_, mut rs) = log.snapshot().unwrap();
    rs.pop();
    let s = verify_records(&key(), &Anchor::GENESIS, &rs).unwrap();
    assert_ne!(s.head, saved_head);
    assert_eq!(s.head.seq, N - 1);
}
