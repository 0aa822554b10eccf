//! The client's address behind a proxy.
//!
//! Per-address limits (connections per IP, the TypeID join throttle) must
//! key on the client, not on the load balancer every client comes through.
//! A proxy can say who the client is in two ways, and both are believed
//! **only** from peers in `--trusted-proxies` (nobody by default):
//! - HTTP headers: `Forwarded` (RFC 7239) or else `X-Forwarded-For`, read
//!   right to left, skipping trusted proxies; the first other address is the
//!   client (so a client cannot spoof its address by sending the header
//!   itself: nginx's `$proxy_add_x_forwarded_for` appends the real one);
//! - the PROXY protocol (v1 text or v2 binary, as HAProxy, AWS NLB and
//!   ingress-nginx's `use-proxy-protocol` send it) ahead of the HTTP bytes,
//!   with `--proxy-protocol`: the connection's peer becomes the header's
//!   source address.
//!
//! The header logic is sans-I/O; [`ProxyProtocolListener`] is the I/O part.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use axum::http::HeaderMap;
use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// Address ranges whose connections may say who the client is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parse CIDR ranges or single addresses (`10.0.0.0/8`, `127.0.0.1`, `::1`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let net = IpNet::from_str(entry)
                .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                .map_err(|_| format!("not an address or CIDR range: {entry:?}"))?;
            nets.push(net);
        }
        Ok(TrustedProxies { nets })
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request from `peer`: the peer itself,
    /// unless it is a trusted proxy that named the client in `Forwarded`
    /// (preferred) or `X-Forwarded-For`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let forwarded = header_values(headers, "forwarded");
        let hops: Vec<Option<IpAddr>> = if !forwarded.is_empty() {
            forwarded
                .iter()
                .flat_map(|v| v.split(','))
                .map(forwarded_for)
                .collect()
        } else {
            header_values(headers, "x-forwarded-for")
                .iter()
                .flat_map(|v| v.split(','))
                .map(|hop| parse_node(hop.trim()))
                .collect()
        };
        // Right to left: the nearest hop was written by the trusted peer.
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) => {
                    client = *ip;
                    if !self.contains(*ip) {
                        return client;
                    }
                }
                // A hop nobody can read (`unknown`, an obfuscated name,
                // garbage): what lies beyond it cannot be believed.
                None => return client,
            }
        }
        client
    }
}

fn header_values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The `for=` node of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value.trim().trim_matches('"')))
            .flatten()
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(node) {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = SocketAddr::from_str(node) {
        return Some(sa.ip().to_canonical());
    }
    let inner = node.strip_prefix('[')?.split(']').next()?;
    IpAddr::from_str(inner).ok().map(|ip| ip.to_canonical())
}

/// What the first bytes of a connection say, as a PROXY protocol header.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// More bytes are needed.
    Incomplete,
    /// A header of `len` bytes naming the client (None: `LOCAL`/`UNKNOWN`,
    /// a health check by the proxy itself; the peer stays the client).
    Complete {
        /// Bytes of the header.
        len: usize,
        /// The client's address.
        source: Option<SocketAddr>,
    },
    /// Not a PROXY protocol header.
    Invalid(String),
}

/// The longest header read (v1 is at most 107 bytes; v2 carries TLVs).
pub const MAX_PROXY_HEADER: usize = 1024;

/// Parse a PROXY protocol v1 or v2 header at the start of `bytes`.
pub fn parse_proxy_header(bytes: &[u8]) -> ProxyHeader {
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return if bytes.len() >= MAX_PROXY_HEADER {
            ProxyHeader::Invalid("PROXY header too long".into())
        } else {
            ProxyHeader::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            ProxyHeader::Complete {
                len: h.header.len(),
                source,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            ProxyHeader::Complete {
                len: h.len(),
                source,
            }
        }
        HeaderResult::V1(Err(e)) => ProxyHeader::Invalid(format!("PROXY v1: {e}")),
        HeaderResult::V2(Err(e)) => ProxyHeader::Invalid(format!("PROXY v2: {e}")),
    }
}

/// Read the PROXY header off `tcp`, consuming exactly its bytes (what
/// follows is the HTTP request, left in the socket for the server).
async fn read_proxy_header(tcp: &mut TcpStream) -> std::io::Result<Option<SocketAddr>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut header: Vec<u8> = Vec::with_capacity(128);
    let mut peeked = [0u8; MAX_PROXY_HEADER];
    loop {
        let n = tcp
            .peek(&mut peeked[..MAX_PROXY_HEADER - header.len()])
            .await?;
        if n == 0 {
            return Err(invalid("closed before the PROXY header".into()));
        }
        let mut candidate = header.clone();
        candidate.extend_from_slice(&peeked[..n]);
        match parse_proxy_header(&candidate) {
            ProxyHeader::Complete { len, source } => {
                // Take the header's bytes only.
                let mut rest = vec![0u8; len - header.len()];
                tcp.read_exact(&mut rest).await?;
                return Ok(source);
            }
            // Everything seen so far belongs to the header: take it and
            // wait for more.
            ProxyHeader::Incomplete => {
                let mut taken = vec![0u8; n];
                tcp.read_exact(&mut taken).await?;
                header.extend_from_slice(&taken);
            }
            ProxyHeader::Invalid(e) => return Err(invalid(e)),
        }
    }
}

/// A TCP listener whose connections from trusted proxies start with a
/// PROXY protocol header: each is read (within `timeout`, in its own task,
/// so a slow one never blocks accepting) and the connection handed on with
/// the client's address. Connections from other peers are handed on as
/// they are: their bytes are not interpreted.
pub struct ProxyProtocolListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TcpStream, SocketAddr)>,
}

impl ProxyProtocolListener {
    /// Accept on `listener`; `tune` is applied to every accepted socket;
    /// `refused` is called for each connection whose header was bad or late.
    pub fn new(
        listener: TcpListener,
        trusted: Arc<TrustedProxies>,
        timeout: Duration,
        tune: impl Fn(&TcpStream) + Send + Sync + 'static,
        refused: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(1024);
        let refused = Arc::new(refused);
        tokio::spawn(async move {
            loop {
                let (mut tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                tune(&tcp);
                if !trusted.contains(peer.ip()) {
                    if tx.send((tcp, peer)).await.is_err() {
                        return;
                    }
                    continue;
                }
                let (tx, refused) = (tx.clone(), refused.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, read_proxy_header(&mut tcp)).await {
                        Ok(Ok(source)) => {
                            let _ = tx.send((tcp, source.unwrap_or(peer))).await;
                        }
                        Ok(Err(e)) => {
                            refused();
                            tracing::debug!(%peer, error = %e, "bad PROXY protocol header; closed");
                        }
                        Err(_) => {
                            refused();
                            tracing::debug!(%peer, "no PROXY protocol header in time; closed");
                        }
                    }
                });
            }
        });
        Ok(ProxyProtocolListener { local, ready })
    }
}

impl axum::serve::Listener for ProxyProtocolListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends with the listener; never resolve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_are_believed_only_from_trusted_peers() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "127.0.0.1"]).unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.7")]);
        // From the proxy: the client it names.
        assert_eq!(trusted.client_ip(ip("10.1.2.3"), &xff), ip("203.0.113.7"));
        // From anyone else: the peer, whatever it claims.
        assert_eq!(
            trusted.client_ip(ip("198.51.100.9"), &xff),
            ip("198.51.100.9")
        );
        // Nothing trusted by default.
        let none = TrustedProxies::default();
        assert_eq!(none.client_ip(ip("10.1.2.3"), &xff), ip("10.1.2.3"));
        // No header: the peer.
        assert_eq!(
            trusted.client_ip(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        // A client that sent its own header through nginx
        // ($proxy_add_x_forwarded_for appends the real address).
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7")]);
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), &spoofed),
            ip("203.0.113.7")
        );
        // Two proxies in a row, and several header lines.
        let chain = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.5"),
        ]);
        assert_eq!(trusted.client_ip(ip("10.0.0.1"), &chain), ip("203.0.113.7"));
        // Only proxies: the farthest one.
        let inner = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.5")]);
        assert_eq!(trusted.client_ip(ip("10.0.0.1"), &inner), ip("10.0.0.9"));
        // Garbage stops the walk at the last hop that could be read.
        let garbage = headers(&[("x-forwarded-for", "203.0.113.7, nonsense, 10.0.0.5")]);
        assert_eq!(trusted.client_ip(ip("10.0.0.1"), &garbage), ip("10.0.0.5"));
        let empty = headers(&[("x-forwarded-for", "")]);
        assert_eq!(trusted.client_ip(ip("10.0.0.1"), &empty), ip("10.0.0.1"));
    }

    #[test]
    fn rfc7239_forwarded_is_preferred() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "::1"]).unwrap();
        let h = headers(&[
            (
                "forwarded",
                r#"for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711""#,
            ),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(
            trusted.client_ip(ip("10.0.0.1"), &h),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("forwarded", "for=unknown, for=10.0.0.3")]);
        assert_eq!(trusted.client_ip(ip("::1"), &h), ip("10.0.0.3"));
        let h = headers(&[("forwarded", "For=\"198.51.100.17:80\"")]);
        assert_eq!(trusted.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.17"));
        // IPv4-mapped peers match IPv4 ranges.
        let xff = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(
            trusted.client_ip(ip("::ffff:10.0.0.1"), &xff),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn trusted_ranges_are_validated() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local"]).is_err());
        assert!(TrustedProxies::parse(&[" ", ""]).unwrap().is_empty());
    }

    #[test]
    fn proxy_protocol_v1_and_v2_headers() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse_proxy_header(v1),
            ProxyHeader::Complete {
                len: 44,
                source: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        assert_eq!(parse_proxy_header(&v1[..20]), ProxyHeader::Incomplete);
        assert_eq!(
            parse_proxy_header(b"PROXY UNKNOWN\r\nGET"),
            ProxyHeader::Complete {
                len: 15,
                source: None
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert!(matches!(
            parse_proxy_header(v6),
            ProxyHeader::Complete { source: Some(s), .. } if s.ip() == ip("2001:db8::7")
        ));
        assert!(matches!(
            parse_proxy_header(b"GET / HTTP/1.1\r\n\r\n"),
            ProxyHeader::Invalid(_)
        ));

        // v2: signature, PROXY over TCP/IPv4, 12 address bytes.
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12]);
        v2.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1]);
        v2.extend_from_slice(&51234u16.to_be_bytes());
        v2.extend_from_slice(&8080u16.to_be_bytes());
        let header_len = v2.len();
        v2.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse_proxy_header(&v2),
            ProxyHeader::Complete {
                len: header_len,
                source: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        assert_eq!(parse_proxy_header(&v2[..14]), ProxyHeader::Incomplete);
        // v2 LOCAL (the proxy's own health check): no client address.
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse_proxy_header(&local),
            ProxyHeader::Complete {
                len: 16,
                source: None
            }
        );
    }

    #[tokio::test]
    async fn the_listener_reads_the_header_of_trusted_peers_only() {
        use tokio::io::AsyncWriteExt;
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let trusted = Arc::new(TrustedProxies::parse(&["127.0.0.1"]).unwrap());
        let mut listener =
            ProxyProtocolListener::new(tcp, trusted, Duration::from_secs(5), |_| {}, || {})
                .unwrap();
        // Header split over two writes, request behind it.
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 512")
            .await
            .unwrap();
        client.flush().await.unwrap();
        let late = async {
            tokio::task::yield_now().await;
            client.write_all(b"34 8080\r\nGET /x").await.unwrap();
            client
        };
        let (client, (mut io, peer)) =
            tokio::join!(late, axum::serve::Listener::accept(&mut listener));
        assert_eq!(peer, "203.0.113.7:51234".parse().unwrap());
        let mut rest = [0u8; 6];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET /x", "the request is left for the server");
        drop(client);

        // An untrusted peer's bytes are not read as a header.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut other = socket.connect(addr).await.unwrap();
        other
            .write_all(b"PROXY TCP4 1.1.1.1 10.0.0.1 1 2\r\n")
            .await
            .unwrap();
        let (mut io, peer) = axum::serve::Listener::accept(&mut listener).await;
        assert_eq!(peer.ip(), ip("127.0.0.2"));
        let mut first = [0u8; 5];
        io.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"PROXY");
    }
}
