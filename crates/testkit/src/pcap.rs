//! A minimal classic-pcap writer (LINKTYPE_RAW, IPv4) for putting our encoded SIP and Diameter
//! payloads on a pretend wire, so tshark can dissect them as if captured.
//!
//! TCP flows get a clean three-way handshake and consistent sequence/ack numbers in both
//! directions, so Wireshark's TCP analysis raises no expert warning of its own: any warning
//! tshark reports is about our payload.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::path::Path;

const LINKTYPE_RAW: u32 = 101;

#[derive(Default)]
struct TcpState {
    next_seq: u32,
}

/// Accumulates packets in memory; [`PcapWriter::write`] saves them.
#[derive(Default)]
pub struct PcapWriter {
    buf: Vec<u8>,
    ts_us: u64,
    flows: HashMap<(SocketAddrV4, SocketAddrV4), TcpState>,
    ip_id: u16,
}

impl PcapWriter {
    pub fn new() -> Self {
        let mut w = Self::default();
        w.buf.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        w.buf.extend_from_slice(&2u16.to_le_bytes());
        w.buf.extend_from_slice(&4u16.to_le_bytes());
        w.buf.extend_from_slice(&0i32.to_le_bytes());
        w.buf.extend_from_slice(&0u32.to_le_bytes());
        w.buf.extend_from_slice(&65535u32.to_le_bytes());
        w.buf.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        w.ts_us = 1_700_000_000_000_000;
        w
    }

    fn record(&mut self, pkt: &[u8]) {
        self.ts_us += 1000;
        let sec = (self.ts_us / 1_000_000) as u32;
        let usec = (self.ts_us % 1_000_000) as u32;
        self.buf.extend_from_slice(&sec.to_le_bytes());
        self.buf.extend_from_slice(&usec.to_le_bytes());
        self.buf
            .extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(pkt);
    }

    fn ipv4(&mut self, src: SocketAddrV4, dst: SocketAddrV4, proto: u8, l4: &[u8]) -> Vec<u8> {
        let total = 20 + l4.len();
        assert!(total <= 65535, "payload too large for one IPv4 packet");
        self.ip_id = self.ip_id.wrapping_add(1);
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        h[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        h[6] = 0x40; // DF
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src.ip().octets());
        h[16..20].copy_from_slice(&dst.ip().octets());
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(l4);
        h
    }

    fn pseudo_sum(src: SocketAddrV4, dst: SocketAddrV4, proto: u8, len: usize) -> u32 {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&src.ip().octets());
        p.extend_from_slice(&dst.ip().octets());
        p.push(0);
        p.push(proto);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        sum16(&p, 0)
    }

    /// One UDP datagram.
    pub fn udp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&src.port().to_be_bytes());
        u[2..4].copy_from_slice(&dst.port().to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(payload);
        let c = checksum(&u, Self::pseudo_sum(src, dst, 17, u.len()));
        let c = if c == 0 { 0xffff } else { c };
        u[6..8].copy_from_slice(&c.to_be_bytes());
        let pkt = self.ipv4(src, dst, 17, &u);
        self.record(&pkt);
    }

    fn tcp_segment(&mut self, src: SocketAddrV4, dst: SocketAddrV4, flags: u8, payload: &[u8]) {
        let seq = self.flows.entry((src, dst)).or_default().next_seq;
        let ack = self.flows.get(&(dst, src)).map(|s| s.next_seq).unwrap_or(0);
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&src.port().to_be_bytes());
        t[2..4].copy_from_slice(&dst.port().to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        let ack_flag = flags & 0x10 != 0;
        t[8..12].copy_from_slice(&(if ack_flag { ack } else { 0 }).to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
        t.extend_from_slice(payload);
        let c = checksum(&t, Self::pseudo_sum(src, dst, 6, t.len()));
        t[16..18].copy_from_slice(&c.to_be_bytes());
        let pkt = self.ipv4(src, dst, 6, &t);
        self.record(&pkt);
        let consumed = payload.len() as u32 + u32::from(flags & 0x03 != 0); // SYN/FIN count one
        let st = self.flows.entry((src, dst)).or_default();
        st.next_seq = st.next_seq.wrapping_add(consumed);
    }

    /// One TCP segment carrying `payload` from `src` to `dst`; the first segment between two
    /// endpoints is preceded by a handshake (the side sending first is the client).
    pub fn tcp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        if !self.flows.contains_key(&(src, dst)) && !self.flows.contains_key(&(dst, src)) {
            self.flows.insert((src, dst), TcpState { next_seq: 1000 });
            self.flows.insert((dst, src), TcpState { next_seq: 5000 });
            self.tcp_segment(src, dst, 0x02, &[]); // SYN
            self.tcp_segment(dst, src, 0x12, &[]); // SYN-ACK
            self.tcp_segment(src, dst, 0x10, &[]); // ACK
        }
        // Split into MSS-sized segments so large payloads stay valid IPv4 packets.
        for chunk in payload.chunks(1400) {
            self.tcp_segment(src, dst, 0x18, chunk); // PSH|ACK
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, &self.buf)
    }
}

fn sum16(data: &[u8], init: u32) -> u32 {
    let mut sum = init;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn checksum(data: &[u8], init: u32) -> u16 {
    let mut sum = sum16(data, init);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
