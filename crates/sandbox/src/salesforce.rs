//! Salesforce OAuth + REST emulator. In progress.
