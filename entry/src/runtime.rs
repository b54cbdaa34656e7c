//! The runtime's shape, one flag of both binaries: `--worker-threads`
//! (`SB_WORKER_THREADS`).
//!
//! The default is 1: everything of the process runs on one thread (tokio's
//! current-thread runtime). A message server is capped at a few hundred
//! connections and the relay only moves frames, so one thread each is
//! enough, and it is cheaper: with more, a frame handed from one task to
//! another often wakes a sleeping thread (a futex and a context switch per
//! hop), which profiles showed as a fifth of each process's CPU per
//! message. Scale out with more servers; give a server more threads when it
//! terminates many TLS handshakes at once. 0 means one per CPU.

/// The default of `--worker-threads`: one thread (see the module docs).
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// `--worker-threads`: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct RuntimeArgs {
    /// Threads that run the server's tasks: 1 (default) runs everything on
    /// one thread, 0 one per CPU.
    #[arg(long, env = "SB_WORKER_THREADS", default_value_t = DEFAULT_WORKER_THREADS)]
    pub worker_threads: usize,
}

impl Default for RuntimeArgs {
    fn default() -> Self {
        RuntimeArgs {
            worker_threads: DEFAULT_WORKER_THREADS,
        }
    }
}

/// A configuration that says how its runtime is shaped.
pub trait RuntimeConfig {
    fn runtime_args(&self) -> RuntimeArgs;
}

impl RuntimeArgs {
    /// The runtime these flags ask for, with I/O and timers.
    pub fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.worker_threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                if n > 0 {
                    b.worker_threads(n);
                }
                b
            }
        };
        builder.enable_all().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavor(n: usize) -> tokio::runtime::RuntimeFlavor {
        let rt = RuntimeArgs { worker_threads: n }.build().expect("runtime");
        rt.handle().runtime_flavor()
    }

    #[test]
    fn one_thread_is_the_current_thread_runtime_and_more_is_multi_threaded() {
        use tokio::runtime::RuntimeFlavor;
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(0), RuntimeFlavor::MultiThread);
        let rt = RuntimeArgs { worker_threads: 3 }.build().expect("runtime");
        assert_eq!(rt.metrics().num_workers(), 3);
    }
}
