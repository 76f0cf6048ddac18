//! `ferrohub`: run a hub (`serve`) or talk to one with `az iot hub`-shaped
//! commands. See [`cli`].

mod cli;

/// mimalloc instead of the system allocator: the hub keeps millions of
/// small JSON nodes (one query document per twin) and builds and frees
/// millions more while loading them; glibc's per-thread arenas spent most
/// of a million-twin start in malloc/free and in growing their heaps.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
