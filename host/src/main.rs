//! `salesflow`: the generic pipeline host.

fn main() {
    println!("salesflow {}", env!("CARGO_PKG_VERSION"));
}
