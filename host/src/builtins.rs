//! The built-in plugins and commands of the `salesflow` binary: the one place that names
//! them. Each crate registers its own (`register`); the engine never names one.

use salesflow_host::registry::Registry;

/// Everything linked into this binary.
pub fn builtins() -> Registry {
    let mut registry = Registry::default();
    // Generic connectors.
    salesflow_plugin_http::register(&mut registry);
    salesflow_plugin_kafka::register(&mut registry);
    salesflow_plugin_batch::register(&mut registry);
    salesflow_plugin_elasticsearch::register(&mut registry);
    // The sales domain.
    salesflow_sales_order_check::register(&mut registry);
    salesflow_sales_carts::register(&mut registry);
    salesflow_sales_read_models::register(&mut registry);
    salesflow_sales_query_api::register(&mut registry);
    // Tools.
    salesflow_load::cli::register(&mut registry);
    salesflow_top::register(&mut registry);
    registry
}
