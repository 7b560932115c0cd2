//! Every sandbox limit and output policy, in one place.

use std::time::Duration;

/// The wasmtime release the host is built on; part of the artifact cache key.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Resource limits applied to every plugin call.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Wall-clock budget of one call, enforced by epoch interruption.
    pub deadline: Duration,
    /// Granularity of the epoch ticker; deadlines are rounded up to it.
    pub epoch_tick: Duration,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Table elements one instance may hold.
    pub table_elements: usize,
    /// Largest component file the host will read.
    pub max_component_bytes: u64,
    /// Log lines a plugin may emit per call; the rest are dropped.
    pub log_lines_per_call: u32,
    /// Longest log line kept, in bytes.
    pub log_line_bytes: usize,
    /// Largest string a plugin may return.
    pub max_string_bytes: usize,
    /// Longest list a plugin may return (args, env, volumes, objects...).
    pub max_list_len: usize,
    /// Most models one preset plugin may declare.
    pub max_models: usize,
    /// Largest per-plugin override of `memory_bytes` a manifest may ask for.
    pub max_memory_override: usize,
    /// Use wasmtime's pooling allocator (faster instantiation).
    pub pooling: bool,
    /// Instances that may run at once when pooling.
    pub max_concurrent_instances: u32,
    /// Bytes of a pooled memory or table kept resident between instances.
    pub keep_resident_bytes: usize,
    /// Core module instances one component may hold when pooling (a Python component has 38).
    pub pool_core_instances_per_component: u32,
    /// Linear memories one component may hold when pooling.
    pub pool_memories_per_component: u32,
    /// Tables one component may hold when pooling.
    pub pool_tables_per_component: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_secs(1),
            epoch_tick: Duration::from_millis(10),
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            max_component_bytes: 64 << 20,
            log_lines_per_call: 64,
            log_line_bytes: 2048,
            max_string_bytes: 16 << 10,
            max_list_len: 512,
            max_models: 4096,
            max_memory_override: 512 << 20,
            pooling: true,
            max_concurrent_instances: 64,
            keep_resident_bytes: 4 << 20,
            pool_core_instances_per_component: 64,
            pool_memories_per_component: 8,
            pool_tables_per_component: 16,
        }
    }
}

impl Limits {
    /// Epoch ticks a call may run: the deadline rounded up, plus one for the
    /// tick already under way.
    pub fn deadline_ticks(&self, deadline: Duration) -> u64 {
        let tick = self.epoch_tick.as_nanos().max(1);
        (deadline.as_nanos().div_ceil(tick) as u64).max(1) + 1
    }
}

/// What plugin output may ask of the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Node paths a workload may mount; empty means no hostPath at all.
    pub allowed_host_paths: Vec<String>,
}

impl Policy {
    /// Whether `path` lies under an allowed host path.
    pub fn allows_host_path(&self, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        !path.split('/').any(|seg| seg == "..")
            && self.allowed_host_paths.iter().any(|p| {
                let p = p.trim_end_matches('/');
                path == p || path.starts_with(&format!("{p}/"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_and_adds_a_tick() {
        let l = Limits::default();
        assert_eq!(l.deadline_ticks(Duration::from_secs(1)), 101);
        assert_eq!(l.deadline_ticks(Duration::from_millis(1)), 2);
    }

    #[test]
    fn host_paths_need_an_allowed_prefix_and_no_dotdot() {
        let p = Policy { allowed_host_paths: vec!["/opt/kaito/models".into()] };
        assert!(p.allows_host_path("/opt/kaito/models/phi-4"));
        assert!(!p.allows_host_path("/opt/kaito/models/../../etc"));
        assert!(!p.allows_host_path("/opt/kaito/modelsx"));
        assert!(!Policy::default().allows_host_path("/"));
    }
}
