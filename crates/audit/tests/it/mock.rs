//! The mockall fake of the port (the `mock` feature, which this crate's tests enable).

#[tokio::test]
async fn mock_audit_log_can_stand_in_for_the_port() {
    use audit::{AuditLog, ChainHead, MockAuditLog};

    let mut mock = MockAuditLog::new();
    mock.expect_head()
        .times(1)
        .returning(|| Ok(ChainHead::GENESIS));
    let log: &dyn AuditLog = &mock;
    assert_eq!(log.head().await.unwrap(), ChainHead::GENESIS);
}
