//! `salesflow`: the generic pipeline host, with the built-in plugins and commands.

/// mimalloc: fewer cycles per allocation than glibc's malloc on the hot paths (bodies,
/// events, batches) and less fragmentation, so resident memory stays lower and flatter.
/// The `system-alloc` feature leaves it out, for heap profilers that hook malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keep_the_heap_off_huge_pages();
    salesflow_cli::main()
}

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` says
/// otherwise.
///
/// mimalloc asks the kernel for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`) and
/// hands memory left free for a second back to it. A pipeline's heap breathes with every
/// batch, so what is handed back is soon taken again, and with huge pages the kernel
/// faults it in and zeroes it 2 MiB at a time, whatever the process touches of it. With
/// 4 KiB pages each process keeps only what it uses: `scripts/bench --ab` measured peak
/// resident memory at 0.72-0.79x for every pipeline, CPU per order unchanged within the
/// run's noise. A heap of a few hundred MiB gains little from huge pages' fewer TLB
/// misses. Setting `MIMALLOC_ALLOW_THP` (to anything) leaves the choice to mimalloc and
/// the system.
fn keep_the_heap_off_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Nothing to log yet (logging starts with the config); without it the process
        // only runs as it did before, so a refusal (a seccomp filter) is not an error.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}
