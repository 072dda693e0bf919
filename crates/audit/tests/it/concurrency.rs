//! Many tasks appending at once still form one chain.

use std::sync::Arc;

use audit::{AuditLog, JsonlAuditLog, MemoryAuditLog, verify};

use crate::common::{key, rec};

const TASKS: u64 = 32;
const PER_TASK: u64 = 50;

async fn hammer(log: Arc<dyn AuditLog>) {
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_TASK {
                seqs.push(log.append(rec(t * PER_TASK + i)).await.unwrap().record.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        // Each task sees its own appends in increasing order.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        all.extend(seqs);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=TASKS * PER_TASK).collect();
    assert_eq!(
        all, expected,
        "every sequence number handed out exactly once"
    );

    let s = verify(log.as_ref(), &key()).await.unwrap();
    assert_eq!(
        (s.records, s.first_seq, s.last_seq),
        (TASKS * PER_TASK, Some(1), Some(TASKS * PER_TASK))
    );
    assert_eq!(log.head().await.unwrap(), s.head);
    // Stored order is sequence order, each chained to its predecessor's MAC (checked by verify).
    let stored = log.read_range(1, usize::MAX).await.unwrap();
    assert!(
        stored
            .windows(2)
            .all(|w| w[0].record.seq + 1 == w[1].record.seq)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_appends_form_one_chain() {
    hammer(Arc::new(MemoryAuditLog::new(key()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jsonl_concurrent_appends_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    hammer(Arc::new(JsonlAuditLog::open(&path, key()).await.unwrap())).await;
    // And the file alone, reopened, holds that chain.
    let log = JsonlAuditLog::open(&path, key()).await.unwrap();
    assert_eq!(
        verify(&log, &key()).await.unwrap().records,
        TASKS * PER_TASK
    );
}
