//! Event intake: inbox, duplicates, checkpoint in the same transaction.

use chrono::Utc;
use std::time::Duration;

use provisioner_store::{IngestOutcome, JobEnd, JobSource, JobState, NewJob, Step, Store};

use crate::support::{both_backends, event};

/// Claims and finishes every job one at a time: the Order Ids in claim order.
async fn claim_all(store: &impl Store, now: chrono::DateTime<Utc>) -> Vec<String> {
    let mut claimed = Vec::new();
    while let Some(job) = store
        .claim("w", now, Duration::from_secs(30))
        .await
        .unwrap()
    {
        claimed.push(job.order_id.clone());
        let done = JobEnd {
            state: JobState::Done,
            error: None,
            dead_letter: None,
        };
        let token = job.lease_owner.clone().unwrap();
        store
            .finish(&job.order_id, &token, done, vec![], now)
            .await
            .unwrap();
    }
    claimed
}

both_backends! {
    async fn duplicates_never_make_a_second_job(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let topic = "/event/OrderProvisionRequested__e";
        assert_eq!(store.load_checkpoint(topic).await.unwrap(), None);

        let e1 = event(1, "801000000000001AAA", "C-1");
        assert_eq!(store.ingest_event(&e1, now).await.unwrap(), IngestOutcome::Enqueued);
        assert_eq!(store.load_checkpoint(topic).await.unwrap(), Some(e1.replay_id.clone()));
        // Redelivery of the same event.
        assert_eq!(store.ingest_event(&e1, now).await.unwrap(), IngestOutcome::DuplicateEvent);
        // Another event for the same order (a second approval, a replay with a new id).
        let e2 = event(2, "801000000000001AAA", "C-1");
        assert_eq!(store.ingest_event(&e2, now).await.unwrap(), IngestOutcome::DuplicateOrder);
        assert_eq!(store.load_checkpoint(topic).await.unwrap(), Some(e2.replay_id.clone()));
        // The reconcile sweep finds the order already known.
        let again = NewJob {
            order_id: "801000000000001AAA".into(),
            customer_number: "C-1".into(),
            account_id: None,
            event_id: None,
            source: JobSource::Reconcile,
        };
        assert!(!store.enqueue(again, vec![], now).await.unwrap());

        let jobs = store.jobs(0, 100).await.unwrap();
        assert_eq!(jobs.len(), 1);
        let job = &jobs[0];
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.step, Step::Received);
        assert_eq!(job.event_id.as_deref(), Some("evt-1"));
        assert_eq!(job.source, JobSource::Event);
    }

    async fn a_batch_is_stored_in_one_transaction_with_its_checkpoint(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let e1 = event(1, "801000000000001AAA", "C-1");
        let e2 = event(2, "801000000000002AAA", "C-1");
        // Same order as e1: a duplicate order inside the batch; e1 again: a duplicate event.
        let e3 = event(3, "801000000000001AAA", "C-1");
        let batch = [e1.clone(), e2.clone(), e3.clone(), e1.clone()];
        assert_eq!(
            store.ingest_events(&batch, now).await.unwrap(),
            [
                IngestOutcome::Enqueued,
                IngestOutcome::Enqueued,
                IngestOutcome::DuplicateOrder,
                IngestOutcome::DuplicateEvent,
            ]
        );
        // The checkpoint is the batch's last event.
        assert_eq!(store.load_checkpoint(&e1.topic).await.unwrap(), Some(e1.replay_id.clone()));
        let jobs = store.jobs(0, 10).await.unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].order_id, "801000000000001AAA");
        assert_eq!(jobs[1].order_id, "801000000000002AAA");
        assert!(store.ingest_events(&[], now).await.unwrap().is_empty());
    }

    async fn replay_ids_are_kept_verbatim(db: &TestDb) {
        let store = db.open().await;
        let mut e = event(1, "801000000000001AAA", "C-1");
        e.replay_id = vec![0xff, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 1];
        store.ingest_event(&e, Utc::now()).await.unwrap();
        assert_eq!(store.load_checkpoint(&e.topic).await.unwrap(), Some(e.replay_id));
        let cp = provisioner_store::Checkpoint { topic: e.topic.clone(), replay_id: vec![9; 10] };
        store.save_checkpoint(&cp, Utc::now()).await.unwrap();
        assert_eq!(store.load_checkpoint(&e.topic).await.unwrap(), Some(vec![9; 10]));
    }

    async fn an_ingested_job_joins_the_round_its_customer_is_due_in(db: &TestDb) {
        // Customer A's three Orders arrive in one batch and take three rounds; B's single Order,
        // in the next batch, joins the first round: the claims go A1, B1, A2, A3. On PostgreSQL
        // the inbox row and the job are one statement; its turn must be the same.
        let store = db.open().await;
        let now = Utc::now();
        let (a1, a2, a3, b1) = ("801000000000001AAA", "801000000000002AAA",
            "801000000000003AAA", "801000000000004AAA");
        let batch = [event(1, a1, "A"), event(2, a2, "A"), event(3, a3, "A")];
        assert_eq!(store.ingest_events(&batch, now).await.unwrap(), [IngestOutcome::Enqueued; 3]);
        assert_eq!(store.ingest_events(&[event(4, b1, "B")], now).await.unwrap(),
            [IngestOutcome::Enqueued]);
        let claimed = claim_all(&store, now).await;
        assert_eq!(claimed, [a1, b1, a2, a3]);
    }

    async fn batches_give_the_outcomes_and_turns_of_events_stored_one_by_one(db: &TestDb) {
        // PostgreSQL stores a batch in one statement; what it decides must be what storing the
        // events one after the other decides: the outcomes, the reopened job, and the turns
        // (so the order of the claims).
        let store = db.open().await;
        let now = Utc::now();
        let order = |n: u32| format!("8010000000000{n:02}AAA");
        // D's Order is refused before the batches: a new event for it reopens it.
        store.ingest_events(&[event(1, &order(1), "D")], now).await.unwrap();
        let d1 = store.claim("w", now, Duration::from_secs(30)).await.unwrap().unwrap();
        let refused = JobEnd { state: JobState::Refused, error: None, dead_letter: None };
        store
            .finish(&d1.order_id, &d1.lease_owner.clone().unwrap(), refused, vec![], now)
            .await
            .unwrap();

        use IngestOutcome::{DuplicateEvent, DuplicateOrder, Enqueued, Reopened};
        // A1 A2 B1
        let first = [event(2, &order(2), "A"), event(3, &order(3), "A"), event(4, &order(4), "B")];
        assert_eq!(store.ingest_events(&first, now).await.unwrap(), [Enqueued; 3]);
        // C1 A3 B2 C2, event 2 again, a second event for A2, D1 again (refused: reopened),
        // and that event twice.
        let second = [
            event(5, &order(5), "C"),
            event(6, &order(6), "A"),
            event(7, &order(7), "B"),
            event(8, &order(8), "C"),
            event(2, &order(2), "A"),
            event(9, &order(3), "A"),
            event(10, &order(1), "D"),
            event(10, &order(1), "D"),
        ];
        assert_eq!(
            store.ingest_events(&second, now).await.unwrap(),
            [Enqueued, Enqueued, Enqueued, Enqueued, DuplicateEvent, DuplicateOrder, Reopened,
                DuplicateEvent]
        );
        assert_eq!(store.jobs(0, 100).await.unwrap().len(), 8);

        // Turns one by one: A1 0, A2 1, B1 0; then C1 0, A3 2, B2 1, C2 1; D1 kept its 0.
        let claimed = claim_all(&store, now).await;
        let expected: Vec<String> = [1, 2, 4, 5, 3, 7, 8, 6].into_iter().map(order).collect();
        assert_eq!(claimed, expected);
    }
}
