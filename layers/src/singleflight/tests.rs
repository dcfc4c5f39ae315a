use super::*;
use futures_util::stream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tower::{service_fn, ServiceExt};

#[derive(Debug, Clone, PartialEq)]
enum E {
    Boom,
    Released(u64),
}
impl From<Released> for E {
    fn from(r: Released) -> Self {
        E::Released(r.at)
    }
}

#[derive(Clone)]
struct R(u32, Option<Priority>);
impl Queued for R {
    fn priority(&self) -> Option<&Priority> {
        self.1.as_ref()
    }
}
fn r(k: u32) -> R {
    R(k, None)
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, E>> + Send>>;

fn channel_service() -> (
    mpsc::UnboundedSender<Bytes>,
    Arc<AtomicUsize>,
    impl Service<R, Response = Body, Error = E, Future = impl Send> + Clone + Send + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let c = calls.clone();
    let inner = service_fn(move |_k: R| {
        c.fetch_add(1, Ordering::SeqCst);
        let rx = rx.lock().unwrap().take().unwrap();
        async move {
            let s: Body = Box::pin(from_rx(rx).map(Ok::<Bytes, E>));
            Ok::<_, E>(s)
        }
    });
    (tx, calls, inner)
}

#[tokio::test]
async fn concurrent_calls_share_one_inner_call_and_stream_while_filling() {
    let (tx, calls, inner) = channel_service();
    let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
    let mut a = svc.clone().oneshot(r(7)).await.unwrap();
    let mut b = svc.clone().oneshot(r(7)).await.unwrap();
    tx.send(Bytes::from_static(b"one")).unwrap();
    // Both readers see the first piece before the call is complete.
    assert_eq!(a.next().await.unwrap().unwrap(), "one");
    assert_eq!(b.next().await.unwrap().unwrap(), "one");
    // A late joiner starts from the beginning.
    let mut c2 = svc.clone().oneshot(r(7)).await.unwrap();
    tx.send(Bytes::from_static(b"two")).unwrap();
    drop(tx);
    assert_eq!(c2.next().await.unwrap().unwrap(), "one");
    assert_eq!(c2.next().await.unwrap().unwrap(), "two");
    assert!(c2.next().await.is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_durable_end_releases_every_unfinished_reader_at_its_offset() {
    let (tx, _calls, inner) = channel_service();
    let svc = SingleflightLayer::new(|k: &R| k.0)
        .durable_when(|_b: &Body| true)
        .layer(inner);
    let mut fast = svc.clone().oneshot(r(1)).await.unwrap();
    let mut slow = svc.clone().oneshot(r(1)).await.unwrap();
    let never = svc.clone().oneshot(r(1)).await.unwrap();
    tx.send(Bytes::from_static(b"abc")).unwrap();
    tx.send(Bytes::from_static(b"de")).unwrap();
    assert_eq!(slow.next().await.unwrap().unwrap(), "abc");
    assert_eq!(fast.next().await.unwrap().unwrap(), "abc");
    assert_eq!(fast.next().await.unwrap().unwrap(), "de");
    drop(tx);
    while svc.in_flight() > 0 {
        tokio::task::yield_now().await;
    }
    assert!(fast.next().await.is_none(), "a finished reader just ends");
    assert_eq!(slow.next().await.unwrap().unwrap_err(), E::Released(3));
    let mut never = never;
    assert_eq!(never.next().await.unwrap().unwrap_err(), E::Released(0));
}

#[tokio::test]
async fn without_durability_pieces_go_once_every_reader_is_past() {
    let (tx, _calls, inner) = channel_service();
    let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
    let mut a = svc.clone().oneshot(r(1)).await.unwrap();
    let mut b = svc.clone().oneshot(r(1)).await.unwrap();
    for p in ["1", "2", "3"] {
        tx.send(Bytes::from(p)).unwrap();
    }
    drop(tx);
    while svc.in_flight() > 0 {
        tokio::task::yield_now().await;
    }
    let pieces = |j: &Joined<(), E>| lock(&j.flight.state).pieces.len();
    assert_eq!(pieces(&a), 3);
    a.next().await.unwrap().unwrap();
    a.next().await.unwrap().unwrap();
    assert_eq!(pieces(&a), 3, "b still needs them");
    assert_eq!(b.next().await.unwrap().unwrap(), "1");
    assert_eq!(pieces(&a), 2);
    drop(b);
    assert_eq!(pieces(&a), 1);
    assert_eq!(a.next().await.unwrap().unwrap(), "3");
    assert_eq!(pieces(&a), 0);
    assert!(a.next().await.is_none());
}

#[tokio::test]
async fn a_speculative_call_nobody_reads_is_cancelled_and_an_urgent_one_is_not() {
    let (tx, _calls, inner) = channel_service();
    let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
    let spec = svc
        .clone()
        .oneshot(R(1, Some(Priority::speculative())))
        .await
        .unwrap();
    tokio::task::yield_now().await;
    assert_eq!(svc.in_flight(), 1);
    drop(spec);
    assert_eq!(svc.in_flight(), 0, "unwanted speculation leaves at once");
    // The cancelled call dropped its body, and with it the channel's receiver.
    for _ in 0..100 {
        if tx.is_closed() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(tx.is_closed(), "the inner call was cancelled");

    let (_tx, _calls, inner) = channel_service();
    let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
    let p = Priority::speculative();
    let spec = svc.clone().oneshot(R(2, Some(p.clone()))).await.unwrap();
    // An urgent joiner promotes the flight; it then survives all of its readers.
    let urgent = svc.clone().oneshot(r(2)).await.unwrap();
    assert!(p.is_urgent(), "the leader's priority was raised");
    drop(spec);
    drop(urgent);
    assert_eq!(svc.in_flight(), 1);
}

#[tokio::test]
async fn a_raised_speculative_joiner_promotes_the_flight() {
    let (_tx, _calls, inner) = channel_service();
    let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
    let leader = Priority::speculative();
    let _a = svc
        .clone()
        .oneshot(R(3, Some(leader.clone())))
        .await
        .unwrap();
    let mine = Priority::speculative();
    let _b = svc.clone().oneshot(R(3, Some(mine.clone()))).await.unwrap();
    assert!(!leader.is_urgent());
    mine.raise();
    assert!(leader.is_urgent());
}

#[tokio::test]
async fn leader_keeps_running_when_its_client_goes_away() {
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    let inner = service_fn(move |_k: R| {
        let f = f.clone();
        async move {
            let s: Body = Box::pin(stream::unfold(0, move |i| {
                let f = f.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if i == 3 {
                        f.fetch_add(1, Ordering::SeqCst);
                        None
                    } else {
                        Some((Ok(Bytes::from_static(b"x")), i + 1))
                    }
                }
            }));
            Ok::<_, E>(s)
        }
    });
    let layer = SingleflightLayer::new(|k: &R| k.0);
    let tracker = layer.tasks.clone();
    let svc = layer.layer(inner);
    let body = svc.clone().oneshot(r(1)).await.unwrap();
    drop(body);
    tracker.close();
    tracker.wait().await;
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert_eq!(svc.in_flight(), 0);
}

#[tokio::test]
async fn failure_reaches_every_reader_and_is_not_replayed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |_k: R| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err(E::Boom)
            } else {
                let s: Body = Box::pin(stream::iter(vec![Ok(Bytes::from_static(b"ok"))]));
                Ok(s)
            }
        }
    });
    let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
    let mut a = svc.clone().oneshot(r(1)).await.unwrap();
    assert_eq!(a.next().await.unwrap().unwrap_err(), E::Boom);
    assert!(a.next().await.is_none());
    let mut b = svc.clone().oneshot(r(1)).await.unwrap();
    assert_eq!(b.next().await.unwrap().unwrap(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_panicking_leader_ends_the_readers_instead_of_hanging_them() {
    let inner = service_fn(|_k: R| async move {
        let s: Body = Box::pin(stream::unfold(0, |i| async move {
            if i == 1 {
                panic!("leader bug");
            }
            Some((Ok(Bytes::from_static(b"x")), i + 1))
        }));
        Ok::<_, E>(s)
    });
    let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
    let mut a = svc.clone().oneshot(r(1)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        let mut n = 0;
        while let Some(x) = a.next().await {
            x.unwrap();
            n += 1;
        }
        n
    })
    .await
    .expect("readers must not hang");
    assert_eq!(got, 1);
    assert_eq!(svc.in_flight(), 0, "the key was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_joiners_all_get_every_piece() {
    let (tx, calls, inner) = channel_service();
    let svc = SingleflightLayer::new(|k: &R| k.0).layer(inner);
    let mut readers = Vec::new();
    for _ in 0..1000 {
        let mut j = svc.clone().oneshot(r(9)).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(b) = j.next().await {
                n += b.unwrap().len() as u64;
            }
            n
        }));
    }
    for _ in 0..200 {
        tx.send(Bytes::from(vec![1u8; 1000])).unwrap();
        tokio::task::yield_now().await;
    }
    drop(tx);
    for r in readers {
        assert_eq!(r.await.unwrap(), 200_000);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn from_rx(mut rx: mpsc::UnboundedReceiver<Bytes>) -> impl Stream<Item = Bytes> {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}
