//! The session-loadtest workload (being written).
