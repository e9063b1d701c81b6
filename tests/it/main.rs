//! Integration tests, compiled into one binary (one link instead of one per file).
//! Each area has its own module; shared fixtures live in `support`.

mod plan;
mod support;
