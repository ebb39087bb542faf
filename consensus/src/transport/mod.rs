//! Node-to-node transport for Raft traffic: tokio TCP, one outgoing
//! connection per peer, length-prefixed prost frames that each carry many
//! groups' messages (batched per peer, as TiKV's raft client does).
//!
//! Every peer has its own bounded queue and sender task, so a dead or slow
//! peer never blocks the others: when its queue is full, messages are
//! dropped (Raft retransmits) and the peer is reported unreachable. Senders
//! reconnect with exponential backoff.

use bytes::Bytes;
use prost::Message as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

mod wire;

use crate::rpc::{RpcRequest, RpcResponse};

/// One Raft message for one group (the Raft message itself, protobuf-encoded).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Raft group (shard or meta) id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The encoded `raft::prelude::Message`.
    #[prost(bytes = "bytes", tag = "2")]
    pub message: Bytes,
}

/// A Raft message on its way out: the protobuf encoding of the message as
/// pieces to send in order, so a large entry's data is a piece of its own
/// and is never copied into the message (see `driver::encode`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutgoingEnvelope {
    /// Raft group (shard or meta) id.
    pub group: u64,
    /// The encoded message, in pieces.
    pub pieces: Vec<Bytes>,
}

impl OutgoingEnvelope {
    /// Bytes of the encoded message.
    pub fn message_len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// The envelope as the receiver decodes it (the pieces joined; only
    /// for in-process delivery).
    pub fn to_envelope(&self) -> Envelope {
        let message = match self.pieces.as_slice() {
            [one] => one.clone(),
            pieces => pieces.concat().into(),
        };
        Envelope {
            group: self.group,
            message,
        }
    }
}

impl From<Envelope> for OutgoingEnvelope {
    fn from(e: Envelope) -> Self {
        OutgoingEnvelope {
            group: e.group,
            pieces: vec![e.message],
        }
    }
}

/// What goes over the wire: a batch of envelopes from one node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// Sending node id.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// The messages.
    #[prost(message, repeated, tag = "2")]
    pub envelopes: Vec<Envelope>,
    /// Forwarded requests.
    #[prost(message, repeated, tag = "3")]
    pub requests: Vec<RpcRequest>,
    /// Answers to requests this node received.
    #[prost(message, repeated, tag = "4")]
    pub responses: Vec<RpcResponse>,
}

/// Something queued for a peer.
#[derive(Debug, Clone)]
enum Outbound {
    Raft(OutgoingEnvelope),
    Request(RpcRequest),
    Response(RpcResponse),
    /// An empty frame: tells the peer this node is alive.
    Ping,
}

impl Outbound {
    fn encoded_len(&self) -> usize {
        match self {
            Outbound::Raft(e) => e.message_len() + 12,
            Outbound::Request(r) => r.encoded_len(),
            Outbound::Response(r) => r.encoded_len(),
            Outbound::Ping => 0,
        }
    }
}

/// Largest frame accepted from a peer (a snapshot chunk travels elsewhere).
pub const MAX_FRAME: usize = 64 << 20;
/// Messages queued per peer before new ones are dropped.
const QUEUE_LEN: usize = 16384;
/// Bytes of envelopes put in one frame before it is sent.
const BATCH_BYTES: usize = 4 << 20;

/// Something that happened to the transport, for the Raft driver.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportEvent {
    /// Messages from `from`.
    Received {
        /// Sending node.
        from: u64,
        /// The messages.
        envelopes: Vec<Envelope>,
    },
    /// Requests from `from`.
    Requests {
        /// Sending node.
        from: u64,
        /// The requests.
        requests: Vec<RpcRequest>,
    },
    /// Answers from `from` to this node's requests.
    Responses {
        /// Answering node.
        from: u64,
        /// The answers.
        responses: Vec<RpcResponse>,
    },
    /// Messages to `to` were lost (queue full or connection failed):
    /// Raft should probe the peer (`report_unreachable`), and the requests
    /// with these ids will get no answer.
    Unreachable {
        /// The peer.
        to: u64,
        /// Groups whose messages were lost.
        groups: Vec<u64>,
        /// Ids of lost requests.
        requests: Vec<u64>,
    },
}

struct PeerQueue {
    tx: mpsc::Sender<Outbound>,
}

/// The node's side of the transport.
#[derive(Clone)]
pub struct Transport {
    node: u64,
    peers: Arc<Mutex<HashMap<u64, PeerQueue>>>,
    events: mpsc::UnboundedSender<TransportEvent>,
    shutdown: watch::Receiver<bool>,
}

impl Transport {
    /// Starts accepting peers on `listener`; events go to the returned receiver.
    pub fn start(
        node: u64,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> (Transport, mpsc::UnboundedReceiver<TransportEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let t = Transport {
            node,
            peers: Arc::new(Mutex::new(HashMap::new())),
            events,
            shutdown,
        };
        tokio::spawn(accept_loop(listener, t.events.clone(), t.shutdown.clone()));
        (t, rx)
    }

    /// Sets (or changes) where peer `node` listens.
    pub fn add_peer(&self, node: u64, addr: SocketAddr) {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.insert(node, PeerQueue { tx });
        tokio::spawn(send_loop(
            self.node,
            node,
            addr,
            rx,
            self.events.clone(),
            self.shutdown.clone(),
        ));
    }

    /// Queues `env` for `to` without waiting; a full queue or an unknown peer
    /// drops it and reports the peer unreachable.
    pub fn send(&self, to: u64, env: OutgoingEnvelope) {
        self.queue(to, Outbound::Raft(env));
    }

    /// Queues a request for `to`; if it cannot be queued, its loss is
    /// reported as [`TransportEvent::Unreachable`].
    pub fn send_request(&self, to: u64, req: RpcRequest) {
        self.queue(to, Outbound::Request(req));
    }

    /// Queues the answer to a request from `to` (lost answers make the
    /// caller time out and retry).
    pub fn send_response(&self, to: u64, resp: RpcResponse) {
        self.queue(to, Outbound::Response(resp));
    }

    /// Sends every known peer an empty frame, so nodes that share no Raft
    /// group still hear from each other (liveness for placement and status).
    pub fn ping_all(&self) {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        for p in peers.values() {
            let _ = p.tx.try_send(Outbound::Ping);
        }
    }

    fn queue(&self, to: u64, m: Outbound) {
        let tx = {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            peers.get(&to).map(|p| p.tx.clone())
        };
        let failed = match tx {
            Some(tx) => match tx.try_send(m) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => m,
            },
            None => m,
        };
        report_lost(&self.events, to, &[failed]);
    }
}

async fn accept_loop(
    listener: TcpListener,
    events: mpsc::UnboundedSender<TransportEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let events = events.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(e) = receive_loop(sock, events, shutdown).await {
                            tracing::debug!(%peer, error = %e, "raft connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a raft connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn receive_loop(
    mut sock: TcpStream,
    events: mpsc::UnboundedSender<TransportEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut reader = wire::FrameReader::default();
    loop {
        let bytes = tokio::select! {
            r = reader.next(&mut sock) => match r? {
                Some(b) => b,
                None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let frame = Frame::decode(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let from = frame.from;
        let mut sent = true;
        let empty =
            frame.envelopes.is_empty() && frame.requests.is_empty() && frame.responses.is_empty();
        if !frame.envelopes.is_empty() || empty {
            sent &= events
                .send(TransportEvent::Received {
                    from,
                    envelopes: frame.envelopes,
                })
                .is_ok();
        }
        if !frame.requests.is_empty() {
            sent &= events
                .send(TransportEvent::Requests {
                    from,
                    requests: frame.requests,
                })
                .is_ok();
        }
        if !frame.responses.is_empty() {
            sent &= events
                .send(TransportEvent::Responses {
                    from,
                    responses: frame.responses,
                })
                .is_ok();
        }
        if !sent {
            return Ok(()); // the node is gone
        }
    }
}

/// Longest wait between two attempts to reach a peer: a node that
/// restarted is reached again within this.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Answers kept for a peer that cannot be reached (the newest).
const MAX_KEPT_ANSWERS: usize = 4096;

async fn send_loop(
    me: u64,
    to: u64,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Outbound>,
    events: mpsc::UnboundedSender<TransportEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut conn: Option<TcpStream> = None;
    // Answers to requests the peer made, kept while it cannot be reached:
    // its caller waits for them (it may only have restarted).
    let mut answers: Vec<Outbound> = Vec::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut batch = std::mem::take(&mut answers);
        if batch.is_empty() {
            let first = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return, // replaced or shut down
                },
                _ = shutdown.changed() => return,
            };
            batch.push(first);
        }
        let mut bytes: usize = batch.iter().map(Outbound::encoded_len).sum();
        while bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    bytes += m.encoded_len();
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::debug!(peer = to, %addr, error = %e, "raft peer unreachable");
                    // Raft messages are stale by the time the peer is back
                    // (Raft resends what matters) and requests fail now so
                    // their callers retry; answers wait for the peer.
                    let (keep, lost): (Vec<_>, Vec<_>) = batch
                        .into_iter()
                        .partition(|m| matches!(m, Outbound::Response(_)));
                    report_lost(&events, to, &lost);
                    answers = keep;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let mut stale = Vec::new();
                    while let Ok(m) = rx.try_recv() {
                        match m {
                            Outbound::Response(_) => answers.push(m),
                            m => stale.push(m),
                        }
                    }
                    if answers.len() > MAX_KEPT_ANSWERS {
                        answers.drain(..answers.len() - MAX_KEPT_ANSWERS);
                    }
                    if !stale.is_empty() {
                        report_lost(&events, to, &stale);
                    }
                    continue;
                }
            }
        }
        let mut frame = wire::OutgoingFrame {
            from: me,
            ..Default::default()
        };
        for m in batch {
            match m {
                Outbound::Raft(e) => frame.envelopes.push(e),
                Outbound::Request(r) => frame.requests.push(r),
                Outbound::Response(r) => frame.responses.push(r),
                Outbound::Ping => {}
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        let mut parts = wire::encode(&frame);
        let r = raftblock_storage::gather::write_all_vectored(s, &mut parts).await;
        if let Err(e) = r {
            tracing::debug!(peer = to, error = %e, "raft connection lost");
            conn = None;
            let lost: Vec<Outbound> = frame
                .envelopes
                .into_iter()
                .map(Outbound::Raft)
                .chain(frame.requests.into_iter().map(Outbound::Request))
                .collect();
            report_lost(&events, to, &lost);
            // Answers go again on the next connection (a duplicate is
            // ignored by the caller, who matches answers by id).
            answers = frame
                .responses
                .into_iter()
                .map(Outbound::Response)
                .collect();
        }
    }
}

fn report_lost(events: &mpsc::UnboundedSender<TransportEvent>, to: u64, lost: &[Outbound]) {
    let mut groups = Vec::new();
    let mut requests = Vec::new();
    for m in lost {
        match m {
            Outbound::Raft(e) => groups.push(e.group),
            Outbound::Request(r) => requests.push(r.id),
            Outbound::Response(_) | Outbound::Ping => {}
        }
    }
    groups.sort_unstable();
    groups.dedup();
    let _ = events.send(TransportEvent::Unreachable {
        to,
        groups,
        requests,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn env(group: u64, i: u32) -> Envelope {
        Envelope {
            group,
            message: Bytes::from(i.to_le_bytes().to_vec()),
        }
    }

    async fn recv_all(
        rx: &mut mpsc::UnboundedReceiver<TransportEvent>,
        want: usize,
    ) -> Vec<Envelope> {
        let mut got = Vec::new();
        while got.len() < want {
            match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                Ok(Some(TransportEvent::Received { envelopes, .. })) => got.extend(envelopes),
                Ok(Some(TransportEvent::Unreachable { .. })) => {}
                _ => break,
            }
        }
        got
    }

    #[tokio::test]
    async fn delivers_in_order_and_survives_a_dead_peer() -> std::io::Result<()> {
        let (_stop_tx, stop) = watch::channel(false);
        let l1 = TcpListener::bind("127.0.0.1:0").await?;
        let l2 = TcpListener::bind("127.0.0.1:0").await?;
        let a2 = l2.local_addr()?;
        // Node 3 is never started: its address refuses connections.
        let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let (t1, mut ev1) = Transport::start(1, l1, stop.clone());
        let (_t2, mut ev2) = Transport::start(2, l2, stop.clone());
        t1.add_peer(2, a2);
        t1.add_peer(3, dead);
        for i in 0..2000u32 {
            t1.send(3, env(7, i).into());
            t1.send(2, env(u64::from(i % 4), i).into());
        }
        let got = recv_all(&mut ev2, 2000).await;
        assert_eq!(got.len(), 2000, "every message to the live peer arrived");
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e, &env(i as u64 % 4, i as u32), "in order");
        }
        // The dead peer was reported, and sending to it never blocked.
        let mut reported = false;
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), ev1.recv()).await {
            if let TransportEvent::Unreachable { to: 3, groups, .. } = ev {
                assert_eq!(groups, vec![7]);
                reported = true;
                break;
            }
        }
        assert!(reported, "unreachable peer reported");
        // A node the transport does not know is reported at once.
        t1.send(9, env(1, 1).into());
        let mut unknown = false;
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), ev1.recv()).await {
            if ev
                == (TransportEvent::Unreachable {
                    to: 9,
                    groups: vec![1],
                    requests: vec![],
                })
            {
                unknown = true;
                break;
            }
        }
        assert!(unknown, "unknown peer reported");
        // A request that cannot be sent is reported by id, so the caller
        // does not wait for an answer that will never come.
        t1.send_request(
            9,
            RpcRequest {
                id: 42,
                ..RpcRequest::default()
            },
        );
        let mut lost = false;
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), ev1.recv()).await {
            if let TransportEvent::Unreachable {
                to: 9, requests, ..
            } = ev
            {
                assert_eq!(requests, vec![42]);
                lost = true;
                break;
            }
        }
        assert!(lost, "lost request reported");
        Ok(())
    }

    #[tokio::test]
    async fn reconnects_when_the_peer_comes_back() -> std::io::Result<()> {
        let (_stop_tx, stop) = watch::channel(false);
        let l1 = TcpListener::bind("127.0.0.1:0").await?;
        let probe = TcpListener::bind("127.0.0.1:0").await?;
        let a2 = probe.local_addr()?;
        drop(probe);
        let (t1, _ev1) = Transport::start(1, l1, stop.clone());
        t1.add_peer(2, a2);
        t1.send(2, env(1, 0).into()); // lost: nobody listens yet
        tokio::time::sleep(Duration::from_millis(200)).await;
        let l2 = TcpListener::bind(a2).await?;
        let (_t2, mut ev2) = Transport::start(2, l2, stop.clone());
        // Keep sending until one arrives (the sender is in backoff).
        let mut got = Vec::new();
        for i in 1..100u32 {
            t1.send(2, env(1, i).into());
            if let Ok(Some(TransportEvent::Received { envelopes, .. })) =
                tokio::time::timeout(Duration::from_millis(100), ev2.recv()).await
            {
                got = envelopes;
                break;
            }
        }
        assert!(!got.is_empty(), "delivered after the peer came back");
        Ok(())
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_only_that_connection() -> std::io::Result<()> {
        let (_stop_tx, stop) = watch::channel(false);
        let l2 = TcpListener::bind("127.0.0.1:0").await?;
        let a2 = l2.local_addr()?;
        let (_t2, mut ev2) = Transport::start(2, l2, stop.clone());
        let mut bad = TcpStream::connect(a2).await?;
        bad.write_all(&(u32::MAX).to_le_bytes()).await?;
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), bad.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed");
        let l1 = TcpListener::bind("127.0.0.1:0").await?;
        let (t1, _ev1) = Transport::start(1, l1, stop.clone());
        t1.add_peer(2, a2);
        t1.send(2, env(5, 5).into());
        assert_eq!(recv_all(&mut ev2, 1).await, vec![env(5, 5)]);
        Ok(())
    }
}
