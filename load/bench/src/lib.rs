//! What the benchmark suite (`salesflow-bench`) and the fault suite (`salesflow-faults`)
//! share: the local stack's addresses, salesflow as child processes on run-tagged topics,
//! orders, a closed-loop HTTP driver, and CPU accounting from `/proc`.

pub mod common;
pub mod cpu;
