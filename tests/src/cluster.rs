//! A private Redis Cluster on loopback: six `redis-server --cluster-enabled yes` nodes (three
//! masters, three replicas) joined by `redis-cli --cluster create`.

use std::process::Command;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, FromValue};

use crate::poll::poll_until;
use crate::redis::RedisServer;

/// Six cluster nodes, each a [`RedisServer`] in its own temp dir; stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes with a 2 s node timeout (so a killed master fails over quickly),
    /// creates the cluster with one replica per master and waits until every node reports
    /// `cluster_state:ok`.
    pub async fn start() -> RedisCluster {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            // A replica may take over however long ago it last heard from its master.
            "--cluster-replica-validity-factor",
            "0",
        ];
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(RedisServer::start_with(&args).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli not found: apt-get install -y redis-tools");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        let ok = poll_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async { cluster.all_ok().await && cluster.replicas_in_sync().await },
        )
        .await;
        assert!(
            ok,
            "the cluster did not reach cluster_state:ok with every replica in sync within 30 s"
        );
        cluster
    }

    /// A `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port()));
        }
        url
    }

    /// The nodes, in creation order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to a node, to kill or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// `CLUSTER INFO` field `cluster_state` of a node; `None` if it does not answer.
    async fn state(node: &RedisServer) -> Option<String> {
        let info: String = node
            .admin()
            .custom(
                CustomCommand::new_static("CLUSTER", ClusterHash::Random, false),
                vec!["INFO"],
            )
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("cluster_state:"))
            .map(|s| s.trim().to_owned())
    }

    /// Whether every running node reports `cluster_state:ok`.
    pub async fn all_ok(&self) -> bool {
        for node in &self.nodes {
            if node.is_running() && Self::state(node).await.as_deref() != Some("ok") {
                return false;
            }
        }
        true
    }

    /// Whether every replica has completed its sync with its master, so that it can take
    /// over when the master fails.
    pub async fn replicas_in_sync(&self) -> bool {
        let mut replicas = 0;
        for node in &self.nodes {
            let info: Result<String, _> = node
                .admin()
                .info(Some(fred::types::InfoKind::Replication))
                .await;
            let Ok(info) = info else { return false };
            if info.contains("role:slave") {
                replicas += 1;
                if !info.contains("master_link_status:up") {
                    return false;
                }
            }
        }
        replicas == 3
    }

    /// Indexes of the nodes that are masters now (`ROLE`).
    pub async fn masters(&self) -> Vec<usize> {
        let mut masters = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            let role: Result<Vec<Value>, _> = node
                .admin()
                .custom(
                    CustomCommand::new_static("ROLE", ClusterHash::Random, false),
                    Vec::<Value>::new(),
                )
                .await;
            if let Ok(role) = role {
                if role.first().and_then(Value::as_str).as_deref() == Some("master") {
                    masters.push(i);
                }
            }
        }
        masters
    }

    /// `CLUSTER args…` on node `i`.
    async fn cluster<R: FromValue>(&self, i: usize, args: Vec<Value>) -> R {
        self.nodes[i].command("CLUSTER", args).await
    }

    /// The node id of node `i` (`CLUSTER MYID`).
    pub async fn node_id(&self, i: usize) -> String {
        self.cluster(i, vec!["MYID".into()]).await
    }

    /// The index of the master serving `slot`, as node `i` sees it (`CLUSTER NODES`).
    pub async fn owner_of(&self, slot: u16, i: usize) -> Option<usize> {
        let nodes: String = self.cluster(i, vec!["NODES".into()]).await;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                match (from.parse::<u16>(), to.parse::<u16>()) {
                    (Ok(from), Ok(to)) => (from..=to).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port = fields[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse::<u16>().ok())?;
                return self.nodes.iter().position(|n| n.port() == port);
            }
        }
        None
    }

    /// Moves `slot` from master `from` to master `to` as `redis-cli --cluster reshard`
    /// does: `SETSLOT IMPORTING` on the target, `SETSLOT MIGRATING` on the source, its keys
    /// moved with `MIGRATE`, then `SETSLOT NODE` on both and on every other master. Between
    /// moving the keys and handing the slot over, the slot stays half-moved for `hold`: the
    /// source answers `ASK` for every key already moved.
    pub async fn migrate_slot(&self, slot: u16, from: usize, to: usize, hold: Duration) {
        let (from_id, to_id) = (self.node_id(from).await, self.node_id(to).await);
        let slot_arg = Value::from(i64::from(slot));
        let setslot = |state: &str, id: &str| -> Vec<Value> {
            vec!["SETSLOT".into(), slot_arg.clone(), state.into(), id.into()]
        };
        let _: Value = self.cluster(to, setslot("IMPORTING", &from_id)).await;
        let _: Value = self.cluster(from, setslot("MIGRATING", &to_id)).await;
        loop {
            let keys: Vec<Value> = self
                .cluster(
                    from,
                    vec!["GETKEYSINSLOT".into(), slot_arg.clone(), 100.into()],
                )
                .await;
            if keys.is_empty() {
                break;
            }
            let mut args: Vec<Value> = vec![
                "127.0.0.1".into(),
                i64::from(self.nodes[to].port()).into(),
                "".into(),
                0.into(),
                5000.into(),
                "KEYS".into(),
            ];
            args.extend(keys);
            let _: Value = self.nodes[from].command("MIGRATE", args).await;
        }
        tokio::time::sleep(hold).await;
        let _: Value = self.cluster(to, setslot("NODE", &to_id)).await;
        let _: Value = self.cluster(from, setslot("NODE", &to_id)).await;
        for i in self.masters().await {
            if i != from && i != to {
                let _: Value = self.cluster(i, setslot("NODE", &to_id)).await;
            }
        }
    }

    /// Error replies of each kind node `i` sent (`INFO errorstats`), e.g. `"ASK"`,
    /// `"MOVED"`.
    pub async fn error_replies(&self, i: usize) -> std::collections::BTreeMap<String, u64> {
        let info: String = self.nodes[i]
            .command("INFO", vec!["errorstats".into()])
            .await;
        info.lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("errorstat_")?.split_once(':')?;
                let count = rest
                    .strip_prefix("count=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), count))
            })
            .collect()
    }
}
