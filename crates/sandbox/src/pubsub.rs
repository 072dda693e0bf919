//! Salesforce Pub/Sub API emulator (gRPC). In progress.
