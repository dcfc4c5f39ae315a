//! A tiny authoritative DNS server on loopback for membership tests: it answers A queries for
//! one name with a set of addresses the test can change while it runs (TTL 0).

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

pub struct Dns {
    pub addr: SocketAddr,
    answers: Arc<Mutex<Vec<Ipv4Addr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Dns {
    /// Serves `name` (e.g. "shoal.test") with `ips`.
    pub async fn start(name: &str, ips: &[Ipv4Addr]) -> Dns {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let answers = Arc::new(Mutex::new(ips.to_vec()));
        let fqdn = Name::from_str(&format!("{name}.")).unwrap();
        let a2 = answers.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = Message::new();
                r.set_id(q.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(q.op_code())
                    .set_authoritative(true)
                    .set_recursion_desired(q.recursion_desired())
                    .set_recursion_available(true);
                let mut known = false;
                for query in q.queries() {
                    r.add_query(query.clone());
                    if query.name().to_lowercase() == fqdn.to_lowercase() {
                        known = true;
                        if query.query_type() == RecordType::A {
                            for ip in a2.lock().unwrap().iter() {
                                r.add_answer(Record::from_rdata(
                                    query.name().clone(),
                                    0,
                                    RData::A(A(*ip)),
                                ));
                            }
                        }
                    }
                }
                if !known {
                    r.set_response_code(ResponseCode::NXDomain);
                }
                if let Ok(v) = r.to_vec() {
                    let _ = sock.send_to(&v, peer).await;
                }
            }
        });
        Dns {
            addr,
            answers,
            task,
        }
    }

    pub fn set(&self, ips: &[Ipv4Addr]) {
        *self.answers.lock().unwrap() = ips.to_vec();
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}
