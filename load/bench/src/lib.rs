//! What the benchmark suite (`salesflow-bench`) and the fault suite (`salesflow-faults`)
//! share: the local stack's addresses, salesflow as child processes on run-tagged topics,
//! orders, and a closed-loop HTTP driver.

pub mod common;
