//! A fake registrar on a UDP socket (the swarm's in-memory [`FakeRegistrar`], answering 401
//! then 200 with AKA from the lab's default K/OP), to measure `ims-load`'s own cost:
//!
//! ```sh
//! cargo run --release -p ims-ue --example fake-registrar -- 127.0.1.10:5060 &
//! target/release/ims-load --pcscf 127.0.1.10:5060 --local-ip 127.0.1.1 --count 100000 --concurrency 2000
//! ```
use std::net::UdpSocket;

use ims_ue::swarm::fake::{FakeCredentials, FakeRegistrar};

fn main() -> std::io::Result<()> {
    let at = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.1.10:5060".into());
    let socket = UdpSocket::bind(&at)?;
    let k = [
        0x46, 0x5b, 0x5c, 0xe8, 0xb1, 0x99, 0xb4, 0x9f, 0xaa, 0x5f, 0x0a, 0x2e, 0xe2, 0x38, 0xa6,
        0xbc,
    ];
    let op = [
        0xcd, 0xc2, 0x02, 0xd5, 0x12, 0x3e, 0x20, 0xf6, 0x2b, 0x6d, 0x67, 0x6a, 0xc7, 0x2c, 0xb3,
        0x18,
    ];
    let opc =
        *ims_aka::milenage::compute_opc(&ims_aka::Key::new(k), &ims_aka::Op::new(op)).expose();
    let mut reg = FakeRegistrar::new("hims.net", FakeCredentials::Aka { k, opc });
    eprintln!("fake registrar on {at}");
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        if let Some(answer) = reg.handle(&buf[..n]) {
            socket.send_to(&answer, from)?;
        }
    }
}
