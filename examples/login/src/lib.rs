//! The login demo (being written).
