//! The real `runc` driver with a stopwatch around `run_detached`, so the benchmark can say how
//! much of skiff's start is `runc run -d` without touching the runtime's code. Every other call
//! is passed through unchanged.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use skiff_runtime::oci::{ContainerState, OciError, OciRuntime, RuncCli};

/// `RuncCli` that records when each `run_detached` began and returned.
#[derive(Debug)]
pub struct TimedOci {
    inner: RuncCli,
    runs: Mutex<HashMap<String, (Instant, Instant)>>,
}

impl TimedOci {
    pub fn new(inner: RuncCli) -> Self {
        TimedOci {
            inner,
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// When `runc run -d` of container `id` began and returned (removed from the record).
    pub fn take_run(&self, id: &str) -> Option<(Instant, Instant)> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}

#[async_trait]
impl OciRuntime for TimedOci {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, OciError> {
        let began = Instant::now();
        let r = self.inner.run_detached(id, bundle, stdout, stderr).await;
        let returned = Instant::now();
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), (began, returned));
        r
    }

    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, OciError> {
        self.inner.create(id, bundle, stdout, stderr).await
    }

    async fn start(&self, id: &str) -> Result<(), OciError> {
        self.inner.start(id).await
    }

    async fn pause(&self, id: &str) -> Result<(), OciError> {
        self.inner.pause(id).await
    }

    async fn resume(&self, id: &str) -> Result<(), OciError> {
        self.inner.resume(id).await
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), OciError> {
        self.inner.kill(id, signal).await
    }

    async fn delete(&self, id: &str, force: bool) -> Result<(), OciError> {
        self.inner.delete(id, force).await
    }

    async fn state(&self, id: &str) -> Result<ContainerState, OciError> {
        self.inner.state(id).await
    }

    async fn list(&self) -> Result<Vec<ContainerState>, OciError> {
        self.inner.list().await
    }

    async fn exec(&self, id: &str, args: &[String], timeout: Duration) -> Result<i32, OciError> {
        self.inner.exec(id, args, timeout).await
    }
}
