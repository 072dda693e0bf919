//! WHMCS External API emulator. In progress.
