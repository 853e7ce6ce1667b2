//! MEFT offload engine: host store, device working set, transfer scheduler, ledger.
