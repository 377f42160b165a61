//! Node-to-node links with `ractor_cluster`: this node's `NodeServer` (magic-cookie
//! authentication), connections to the peers announced on NATS, and what becomes of each
//! session, reported to the membership actor.
//!
//! ractor_cluster has no discovery and no failure detector (DESIGN §12): peers come from
//! the NATS heartbeats and liveness from their timing; this module only keeps the links
//! and says when one was refused (a different cookie, or not a Mister Smith node).

use ractor::{Actor, ActorCell, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
};

use super::membership::{ClusterConfig, MembershipMsg};
use super::peer_tls::PeerTls;

/// What happened to one ractor_cluster session.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    Authenticated {
        session: u64,
        peer: Option<String>,
        addr: String,
    },
    Closed {
        session: u64,
        peer: Option<String>,
        addr: String,
    },
}

/// Starts this node's ractor_cluster server on `listen`, linked to (and reporting to)
/// the membership actor.
pub async fn start_server(
    node: &str,
    config: &ClusterConfig,
    membership: &ActorRef<MembershipMsg>,
) -> anyhow::Result<ActorRef<NodeServerMessage>> {
    let listen = config.listen;
    let encryption = config
        .tls
        .as_ref()
        .map(|tls| IncomingEncryptionMode::Tls(tls.acceptor.clone()));
    let server = NodeServer::new(
        listen.port(),
        config.cookie.clone(),
        node.to_string(),
        config.advertise.clone(),
        encryption,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(listen.ip());
    let (server, _) = Actor::spawn_linked(None, server, (), membership.get_cell())
        .await
        .map_err(|e| anyhow::anyhow!("cluster.listen {listen}: {e}"))?;
    server.cast(NodeServerMessage::SubscribeToEvents {
        id: "membership".into(),
        subscription: Box::new(Reporter(membership.clone())),
    })?;
    Ok(server)
}

/// Opens a session to a peer's ractor_cluster server (authentication follows), over TLS
/// when `tls` is set (the peer's certificate must name the host of `addr`).
pub async fn connect(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    tls: Option<&PeerTls>,
) -> anyhow::Result<()> {
    let connected = match tls {
        Some(tls) => {
            let name = PeerTls::server_name(addr).map_err(|e| anyhow::anyhow!(e))?;
            ractor_cluster::client_connect_enc(server, addr, tls.connector.clone(), name).await
        }
        None => ractor_cluster::client_connect(server, addr).await,
    };
    connected.map_err(|e| anyhow::anyhow!("{addr}: {e}"))
}

/// The cell of this node's ractor_cluster server, for the actor tree.
pub fn cell(server: &ActorRef<NodeServerMessage>) -> ActorCell {
    server.get_cell()
}

/// Forwards session events to the membership actor (the callbacks must not block).
struct Reporter(ActorRef<MembershipMsg>);

/// `n2@host` → `n2`.
fn peer_name(ses: &NodeServerSessionInformation) -> Option<String> {
    ses.peer_name
        .as_ref()
        .map(|n| n.name.split('@').next().unwrap_or_default().to_string())
        .filter(|n| !n.is_empty())
}

impl NodeEventSubscription for Reporter {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::Peer(PeerEvent::Closed {
            session: ses.node_id,
            peer: peer_name(&ses),
            addr: ses.peer_addr.clone(),
        }));
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::Peer(PeerEvent::Authenticated {
            session: ses.node_id,
            peer: peer_name(&ses),
            addr: ses.peer_addr.clone(),
        }));
    }
}
