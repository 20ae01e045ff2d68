//! The salesflow plugin API.
//!
//! A pipeline is a graph of components: **sources** produce [`Batch`]es, **stages**
//! transform them, **sinks** write them somewhere durable. Each component is made by a
//! [`Plugin`], selected in `pipeline.toml` by `type = "..."`. Work moves in batches, and
//! every batch carries acknowledgement claims ([`AckSet`]) back to the source batches it
//! came from: a source learns when every sink has durably accepted its batch — the Kafka
//! source commits offsets only then.
//!
//! Built-in plugins link statically and implement [`Plugin`]; plugins loaded at run time
//! cross the C ABI of `salesflow-plugin-abi`.

pub mod ack;
pub mod auth;
pub mod cache;
pub mod command;
pub mod component;
pub mod config;
pub mod duration;
pub mod event;
pub mod json;
pub mod plugin;
pub mod retry;
pub mod tap;

pub use ack::{AckHandle, AckSet, Rejection, Status};
pub use cache::{CacheBudget, SizedLru};
pub use command::{
    Command, ComponentView, ConfigView, PipelineView, Registrar, multi_thread_runtime, parse_args,
    worker_threads_from_env,
};
pub use component::{
    Backpressure, ByteGate, CancellationToken, Downstream, LaneSender, LaneSource, Output,
    OutputObserver, PluginError, Refused, SendError, Sink, SinkFactory, Source, Stage,
    StageFactory, WriteFuture,
};
pub use config::{MAX_PERMITS, NAME_RULE, PERMITS_RULE, Secret, is_name, is_secret_key};
pub use event::{Batch, Event, Origin};
pub use plugin::{
    BuildContext, Component, ComponentKind, ConfigError, HealthFn, Healthcheck, Plugin, Route,
    Settings, merged_schema, parse_settings, split_settings,
};
pub use retry::{Retried, RetryPolicy};
pub use tap::{Tap, Watch};

/// Re-exported so that plugins use the host's versions.
pub use {async_trait::async_trait, axum, bytes, futures, prometheus_client, schemars, toml};
